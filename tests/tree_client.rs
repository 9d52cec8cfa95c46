//! Directory trees through the real `ringcrypt` binary in offline mode (`--keys FILE -r`):
//! a round trip of a few hundred files in nested directories gives back the same tree (bytes,
//! mode bits, mtimes, directories) minus the skipped specials; the summary counts and exit
//! codes; `--skip-existing` redoing only what is missing or broken; and snapshots of what a
//! person (or a log) sees: the non-terminal output of a small fixed tree, and the head of the
//! bash completion script.
//!
//! The daemon's side of `-r` is tested with the daemon; this file needs no daemon.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use support::{Run, keygen, mkfifo, ringcrypt_command, running_as_root, write_private};

/// Chunk size for the trees here: 4 KiB, so "0 to 3 chunks" stays small.
const CHUNK_LOG2: &str = "12";
const CHUNK: usize = 1 << 12;

/// Runs `ringcrypt ARGS` in `cwd`; its output must be UTF-8.
fn ringcrypt(cwd: &Path, args: &[&str]) -> Run {
    Run::of_utf8(
        ringcrypt_command()
            .args(args)
            .current_dir(cwd)
            .output()
            .expect("run ringcrypt"),
    )
}

/// A key ring with one fresh key, mode 0600, at `dir/keys.toml`.
fn key_ring(dir: &Path) -> PathBuf {
    let path = dir.join("keys.toml");
    write_private(&path, &keygen("tree-test"));
    path
}

/// Deterministic bytes for file number `n`.
fn content(n: usize, len: usize) -> Vec<u8> {
    let mut x = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn set_mtime(path: &Path, n: usize) {
    // Distinct, in the past, with nanoseconds, so "kept" cannot be "set to now" by luck.
    let at = SystemTime::UNIX_EPOCH
        + Duration::new(1_600_000_000 + n as u64 * 3_607, 123_456 * n as u32);
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(at)
        .unwrap();
}

/// What a tree holds, for comparison: relative path -> (kind, mode bits, mtime, bytes).
type Listing = BTreeMap<PathBuf, (char, u32, Option<(i64, i64)>, Vec<u8>)>;

fn listing(root: &Path) -> Listing {
    fn walk(root: &Path, rel: &Path, out: &mut Listing) {
        let mut names: Vec<_> = fs::read_dir(root.join(rel))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for name in names {
            let rel = rel.join(&name);
            let path = root.join(&rel);
            let meta = fs::symlink_metadata(&path).unwrap();
            let mode = meta.mode() & 0o7777;
            if meta.is_dir() {
                out.insert(rel.clone(), ('d', mode, None, Vec::new()));
                walk(root, &rel, out);
            } else if meta.is_file() {
                let mtime = Some((meta.mtime(), meta.mtime_nsec()));
                // The unreadable file (non-root runs) lists with no bytes.
                let bytes = fs::read(&path).unwrap_or_default();
                out.insert(rel, ('f', mode, mtime, bytes));
            } else {
                out.insert(rel, ('s', mode, None, Vec::new()));
            }
        }
    }
    let mut out = Listing::new();
    walk(root, Path::new(""), &mut out);
    out
}

/// Gives every directory under `root` owner rwx again, so the temp dir can be removed.
fn unlock(root: &Path) {
    for entry in fs::read_dir(root).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            let path = entry.path();
            let mode = fs::metadata(&path).unwrap().mode();
            fs::set_permissions(&path, fs::Permissions::from_mode(mode | 0o700)).unwrap();
            unlock(&path);
        }
    }
}

/// The counts of a summary line: (ok, failed, skipped).
fn counts(stdout: &str) -> (u64, u64, u64) {
    let line = stdout.lines().next().expect("a summary line");
    let after = line.split(": ").nth(1).expect("counts after `: `");
    let numbers: Vec<u64> = after
        .split(&[',', ' ', '('][..])
        .filter_map(|w| w.parse().ok())
        .take(3)
        .collect();
    (numbers[0], numbers[1], numbers[2])
}

struct Tree {
    /// Regular files the job can read.
    readable: usize,
    /// A file nobody but root can read, when not running as root.
    unreadable: Option<PathBuf>,
}

/// ~300 files in nested directories, sizes 0 to 3 chunks (and around each boundary), varied
/// modes and mtimes; a symlink, a FIFO, a read-only directory; and, when not root, an
/// unreadable file.
fn build_tree(src: &Path) -> Tree {
    let sizes = [
        0,
        1,
        15,
        16,
        17,
        CHUNK - 1,
        CHUNK,
        CHUNK + 1,
        2 * CHUNK - 1,
        2 * CHUNK,
        2 * CHUNK + 1,
        3 * CHUNK - 1,
        3 * CHUNK,
        3 * CHUNK + 7,
        1000,
    ];
    let file_modes = [0o644, 0o600, 0o640, 0o755, 0o444];
    let dir_modes = [0o755, 0o750, 0o700, 0o775];
    let mut n = 0;
    let mut dirs = vec![src.to_path_buf()];
    for a in 0..4 {
        for b in 0..3 {
            let dir = src.join(format!("d{a}")).join(format!("s{b}"));
            fs::create_dir_all(&dir).unwrap();
            dirs.push(dir.parent().unwrap().to_path_buf());
            dirs.push(dir);
        }
    }
    dirs.sort();
    dirs.dedup();
    for (i, dir) in dirs.iter().enumerate() {
        for _ in 0..(300 / dirs.len()) {
            let path = dir.join(format!("f{n:03}.dat"));
            fs::write(&path, content(n, sizes[n % sizes.len()])).unwrap();
            set_mtime(&path, n);
            fs::set_permissions(&path, fs::Permissions::from_mode(file_modes[n % 5])).unwrap();
            n += 1;
        }
        if i > 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(dir_modes[i % 4])).unwrap();
        }
    }
    // A read-only directory: its output gets the mode after its files are written.
    let locked = src.join("locked");
    fs::create_dir(&locked).unwrap();
    for k in 0..3 {
        let path = locked.join(format!("r{k}"));
        fs::write(&path, content(n, 100 * k)).unwrap();
        set_mtime(&path, n);
        n += 1;
    }
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o555)).unwrap();
    symlink("d0/f000.dat", src.join("link")).unwrap();
    mkfifo(&src.join("d1").join("fifo"));
    let unreadable = if running_as_root() {
        println!("running as root: the unreadable-file case is skipped (root reads everything)");
        None
    } else {
        let path = src.join("d2").join("secret");
        fs::write(&path, b"no").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o000)).unwrap();
        Some(path)
    };
    Tree {
        readable: n,
        unreadable,
    }
}

#[test]
fn a_tree_round_trips_with_modes_and_mtimes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let keys = key_ring(dir);
    let keys = keys.to_str().unwrap();
    let src = dir.join("src");
    fs::create_dir(&src).unwrap();
    let tree = build_tree(&src);
    assert!(tree.readable >= 290, "{}", tree.readable);

    let enc = ringcrypt(
        dir,
        &[
            "--keys",
            keys,
            "encrypt",
            "-r",
            "src",
            "--chunk-log2",
            CHUNK_LOG2,
        ],
    );
    let failed = u64::from(tree.unreadable.is_some());
    assert_eq!(enc.code, if failed == 1 { 1 } else { 0 }, "{enc:?}");
    assert_eq!(
        counts(&enc.stdout),
        (tree.readable as u64, failed, 2),
        "{enc:?}"
    );
    assert!(
        enc.stdout.starts_with("encrypted tree src -> src.rcrypt: "),
        "{enc:?}"
    );
    assert!(
        enc.stderr.contains("skipped: src/link (symbolic link)\n"),
        "{enc:?}"
    );
    assert!(
        enc.stderr.contains("skipped: src/d1/fifo (fifo)\n"),
        "{enc:?}"
    );
    if tree.unreadable.is_some() {
        assert!(
            enc.stderr.contains("failed: src/d2/secret: ")
                && enc.stderr.contains("[permission_denied]"),
            "{enc:?}"
        );
        assert!(enc.stderr.contains("error: 1 file failed"), "{enc:?}");
    }
    // Every encrypted file is named FILE.rcrypt and carries the source's mode and mtime.
    let source = listing(&src);
    let sealed = listing(&dir.join("src.rcrypt"));
    for (rel, (kind, mode, mtime, _)) in &source {
        if *kind == 's' || Some(src.join(rel)) == tree.unreadable {
            continue;
        }
        let name = match kind {
            'f' => {
                let mut name = rel.clone().into_os_string();
                name.push(".rcrypt");
                PathBuf::from(name)
            }
            _ => rel.clone(),
        };
        let got = sealed
            .get(&name)
            .unwrap_or_else(|| panic!("{name:?} missing"));
        assert_eq!((got.0, got.1, got.2), (*kind, *mode, *mtime), "{name:?}");
    }

    let dec = ringcrypt(
        dir,
        &["--keys", keys, "decrypt", "-r", "src.rcrypt", "-o", "back"],
    );
    assert_eq!(dec.code, 0, "{dec:?}");
    assert_eq!(counts(&dec.stdout), (tree.readable as u64, 0, 0), "{dec:?}");
    assert_eq!(without_progress(&dec.stderr), "", "{dec:?}");

    // The same tree, byte for byte, minus the skipped specials and the unreadable file.
    let mut expected = source;
    expected.retain(|rel, (kind, ..)| *kind != 's' && Some(src.join(rel)) != tree.unreadable);
    let back = listing(&dir.join("back"));
    assert_eq!(back.len(), expected.len());
    for ((rel_a, a), (rel_b, b)) in expected.iter().zip(&back) {
        assert_eq!(rel_a, rel_b);
        assert!(
            a == b,
            "{rel_a:?} differs: mode {:o} vs {:o}, mtime {:?} vs {:?}, {} vs {} bytes",
            a.1,
            b.1,
            a.2,
            b.2,
            a.3.len(),
            b.3.len()
        );
    }
    // The roots themselves are mirrored too.
    let root_mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(root_mode(&dir.join("back")), root_mode(&src));

    for root in ["src", "src.rcrypt", "back"] {
        unlock(&dir.join(root));
    }
}

#[test]
fn skip_existing_redoes_only_missing_and_broken_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let keys = key_ring(dir);
    let keys = keys.to_str().unwrap();
    let src = dir.join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    for n in 0..20 {
        let sub = if n % 2 == 0 { "" } else { "sub" };
        fs::write(src.join(sub).join(format!("f{n:02}")), content(n, n * 700)).unwrap();
    }
    let enc = ringcrypt(dir, &["--keys", keys, "encrypt", "-r", "src", "-o", "enc"]);
    assert_eq!((enc.code, counts(&enc.stdout)), (0, (20, 0, 0)), "{enc:?}");

    // Identity of each output: inode and ctime (the mtime is the source's, so it cannot tell).
    let identity = |p: &Path| {
        let m = fs::metadata(p).unwrap();
        (m.ino(), m.ctime(), m.ctime_nsec())
    };
    let enc_dir = dir.join("enc");
    let before: BTreeMap<_, _> = listing(&enc_dir)
        .into_keys()
        .filter(|rel| enc_dir.join(rel).is_file())
        .map(|rel| {
            let id = identity(&enc_dir.join(&rel));
            (rel, id)
        })
        .collect();
    let removed = ["f00.rcrypt", "sub/f03.rcrypt", "sub/f19.rcrypt"];
    for rel in removed {
        fs::remove_file(enc_dir.join(rel)).unwrap();
    }
    // A truncated output does not verify, so it is replaced.
    let broken = "f10.rcrypt";
    let len = fs::metadata(enc_dir.join(broken)).unwrap().len();
    fs::File::options()
        .write(true)
        .open(enc_dir.join(broken))
        .unwrap()
        .set_len(len - 1)
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));

    let rerun = ringcrypt(
        dir,
        &[
            "--keys",
            keys,
            "encrypt",
            "-r",
            "src",
            "-o",
            "enc",
            "--skip-existing",
        ],
    );
    assert_eq!(
        (rerun.code, counts(&rerun.stdout)),
        (0, (4, 0, 16)),
        "{rerun:?}"
    );
    // Verified outputs are counted, not listed.
    assert_eq!(without_progress(&rerun.stderr), "", "{rerun:?}");
    for (rel, id) in &before {
        let redone = removed.contains(&rel.to_str().unwrap()) || rel.to_str() == Some(broken);
        let now = identity(&enc_dir.join(rel));
        if redone {
            assert_ne!(now, *id, "{rel:?} should be new");
        } else {
            assert_eq!(now, *id, "{rel:?} should be untouched");
        }
    }
    // Without --skip-existing, existing outputs are failures ([exists]), not replaced.
    let again = ringcrypt(dir, &["--keys", keys, "encrypt", "-r", "src", "-o", "enc"]);
    assert_eq!(
        (again.code, counts(&again.stdout)),
        (1, (0, 20, 0)),
        "{again:?}"
    );
    assert!(again.stderr.contains("[exists]"), "{again:?}");

    // Decrypt: an existing plaintext output is enough.
    let dec = ringcrypt(
        dir,
        &["--keys", keys, "decrypt", "-r", "enc", "-o", "plain"],
    );
    assert_eq!((dec.code, counts(&dec.stdout)), (0, (20, 0, 0)), "{dec:?}");
    fs::remove_file(dir.join("plain/sub/f05")).unwrap();
    let dec = ringcrypt(
        dir,
        &[
            "--keys",
            keys,
            "decrypt",
            "-r",
            "enc",
            "-o",
            "plain",
            "--skip-existing",
        ],
    );
    assert_eq!((dec.code, counts(&dec.stdout)), (0, (1, 0, 19)), "{dec:?}");
    assert_eq!(
        fs::read(dir.join("plain/sub/f05")).unwrap(),
        content(5, 5 * 700)
    );
}

#[test]
fn usage_errors_for_trees() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let keys = key_ring(dir);
    let keys = keys.to_str().unwrap();
    fs::create_dir(dir.join("src")).unwrap();
    // decrypt -r never guesses an output name.
    let run = ringcrypt(dir, &["--keys", keys, "decrypt", "-r", "src"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("does not end in .rcrypt"), "{run:?}");
    // rewrap -r needs -o or --in-place.
    let run = ringcrypt(dir, &["--keys", keys, "rewrap", "-r", "src"]);
    assert_eq!(run.code, 2, "{run:?}");
    // --skip-existing is for trees.
    let run = ringcrypt(dir, &["--keys", keys, "encrypt", "src", "--skip-existing"]);
    assert_eq!(run.code, 2, "{run:?}");
    let run = ringcrypt(
        dir,
        &[
            "--keys",
            keys,
            "rewrap",
            "-r",
            "src",
            "--in-place",
            "--skip-existing",
        ],
    );
    assert_eq!(run.code, 2, "{run:?}");
    // An output inside the input is refused before anything is written.
    let run = ringcrypt(
        dir,
        &["--keys", keys, "encrypt", "-r", "src", "-o", "src/out"],
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("inside the input directory"), "{run:?}");
    assert!(!dir.join("src/out").exists());
    // A file is not a tree.
    fs::write(dir.join("file"), b"x").unwrap();
    let run = ringcrypt(dir, &["--keys", keys, "encrypt", "-r", "file"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("not a directory"), "{run:?}");
}

/// What a log sees: summary on stdout, failures and skipped entries on stderr, no progress
/// line for a job under 2 s, no terminal control codes.
#[test]
fn snapshot_of_plain_output() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let keys = key_ring(dir);
    let keys = keys.to_str().unwrap();
    let src = dir.join("photos");
    fs::create_dir_all(src.join("2024/raw")).unwrap();
    fs::write(src.join("a.txt"), b"hello\n").unwrap();
    fs::write(src.join("2024/b.bin"), content(1, 70_000)).unwrap();
    fs::write(src.join("2024/raw/empty"), b"").unwrap();
    symlink("a.txt", src.join("latest")).unwrap();
    mkfifo(&src.join("pipe"));

    let enc = ringcrypt(dir, &["--keys", keys, "encrypt", "-r", "photos"]);
    // Debris and a file that is not ours in the encrypted tree: decrypt must say so.
    fs::write(dir.join("photos.rcrypt/notes.txt"), b"not sealed").unwrap();
    fs::write(
        dir.join("photos.rcrypt/2024/junk.rcrypt"),
        b"not a ringcrypt file",
    )
    .unwrap();
    let dec = ringcrypt(
        dir,
        &[
            "--keys",
            keys,
            "decrypt",
            "-r",
            "photos.rcrypt",
            "-o",
            "restored",
        ],
    );
    // A slow machine may take over 2 s and print a progress line; its figures vary.
    let shown = |run: &Run| {
        let stderr: String = run
            .stderr
            .lines()
            .filter(|line| !line.starts_with("progress: "))
            .map(|line| format!("{line}\n"))
            .collect();
        format!(
            "exit: {}\n--- stdout\n{}--- stderr\n{stderr}",
            run.code, run.stdout
        )
        .replace(dir.to_str().unwrap(), "[TMP]")
    };
    insta::assert_snapshot!("encrypt_tree", shown(&enc));
    insta::assert_snapshot!("decrypt_tree_with_failures", shown(&dec));
}

#[test]
fn snapshot_of_bash_completions_head() {
    let tmp = tempfile::tempdir().unwrap();
    let run = ringcrypt(tmp.path(), &["completions", "bash"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains("complete -F _ringcrypt"),
        "{}",
        run.stdout
    );
    for shell in ["zsh", "fish"] {
        let other = ringcrypt(tmp.path(), &["completions", shell]);
        assert_eq!(other.code, 0, "{other:?}");
        assert!(other.stdout.contains("ringcrypt"), "{shell}");
    }
    let head: Vec<&str> = run.stdout.lines().take(12).collect();
    insta::assert_snapshot!("completions_bash_head", head.join("\n"));
}

#[test]
fn every_file_command_documents_recursive_use() {
    let tmp = tempfile::tempdir().unwrap();
    for command in ["encrypt", "decrypt", "rewrap"] {
        let run = ringcrypt(tmp.path(), &[command, "--help"]);
        assert_eq!(run.code, 0, "{run:?}");
        assert!(
            run.stdout.contains(&format!("{command} -r ")),
            "{command}: {}",
            run.stdout
        );
        assert!(run.stdout.contains("--skip-existing"), "{command}");
        assert!(run.stdout.contains("--recursive"), "{command}");
    }
    let run = ringcrypt(tmp.path(), &["completions", "--help"]);
    assert!(run.stdout.contains("Examples:"), "{run:?}");
}

/// Stderr without the `progress:` lines a tree run writes every 2 s when stderr is not a
/// terminal (a loaded machine makes a small tree take that long).
fn without_progress(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|line| !line.starts_with("progress: "))
        .map(|line| format!("{line}\n"))
        .collect()
}
