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

// ---- 5. a tree must not walk its own output -----------------------------------------------

/// A small tree: three files and a subdirectory with two more.
fn small_tree(dir: &Path) {
    fs::create_dir_all(dir.join("sub")).unwrap();
    for (i, name) in ["a", "b", "c", "sub/d", "sub/e"].iter().enumerate() {
        fs::write(dir.join(name), bytes(500 + 100 * i, 70 + i as u64)).unwrap();
    }
}

/// Sends `encrypt -r INPUT -o OUTPUT` (request id `id`) and returns its replies, once a
/// wrongly started walk has had a moment to show itself on disk.
fn try_tree(rd: &Daemon, input: &Path, output: &Path, id: &str, what: &str) -> Vec<Value> {
    let mut c = rd.client();
    c.send(&tree_req("encrypt", input, output, id));
    let replies = c.until_end_noting(rd, what);
    std::thread::sleep(Duration::from_millis(200));
    replies
}

#[track_caller]
fn assert_inside_refusal(replies: &[Value], also_same: bool) {
    let end = replies.last().unwrap();
    assert_eq!(end["type"], "error", "want bad_request: {}", brief(replies));
    assert_eq!(code(end), "bad_request", "{end}");
    let message = end["message"].as_str().unwrap_or("");
    let ok = message.contains("inside the input directory")
        || (also_same && message.contains("the input directory itself"));
    assert!(ok, "the message does not say why: {message:?}");
}

/// (5a) `encrypt -r t -o t/enc`.
///
/// Intact: refused `bad_request` ("inside the input directory"); `t/enc` never appears and
/// `t` is byte for byte what it was.
fn tree_output_inside_input(backend: &'static str) {
    let rd = rd(backend).start();
    let t = rd.root.join("t");
    small_tree(&t);
    let before = snapshot(&t);
    let replies = try_tree(&rd, &t, &t.join("enc"), "inside", "tree into itself");
    assert!(
        !t.join("enc").exists(),
        "t/enc was created: {}",
        brief(&replies)
    );
    assert!(snapshot(&t) == before, "t changed: {}", brief(&replies));
    assert_inside_refusal(&replies, false);
}

/// (5b) `encrypt -r u -o u`: the output is the input.
///
/// Intact: refused `bad_request` (the message may say "inside the input directory" or "the
/// input directory itself"); `u` unchanged, no `*.rcrypt` in it.
fn tree_output_is_input(backend: &'static str) {
    let rd = rd(backend).start();
    let u = rd.root.join("u");
    small_tree(&u);
    let before = snapshot(&u);
    let replies = try_tree(&rd, &u, &u, "same", "tree onto itself");
    let sealed: Vec<_> = files_under(&u)
        .into_iter()
        .filter(|f| f.to_string_lossy().ends_with(".rcrypt"))
        .collect();
    assert!(sealed.is_empty(), "outputs written into u: {sealed:?}");
    assert!(snapshot(&u) == before, "u changed: {}", brief(&replies));
    assert_inside_refusal(&replies, true);
}

/// (5c) (root) Through a bind mount: `t` mounted again at `root/m`, then `encrypt -r t -o
/// root/m/enc`, an output that is lexically elsewhere but physically inside `t`.
///
/// Intact: refused `bad_request` ("inside the input directory"); nothing created: `t` is what
/// it was (so no `t/enc`, no `m/enc`).
fn tree_output_inside_input_through_bind_mount(backend: &'static str) {
    if !running_as_root() {
        eprintln!("skipped: needs root to bind-mount");
        return;
    }
    let rd = rd(backend).start();
    let t = rd.root.join("t");
    small_tree(&t);
    let m = rd.root.join("m");
    fs::create_dir(&m).unwrap();
    let mounted = Command::new("mount").arg("--bind").arg(&t).arg(&m).status();
    if !mounted.is_ok_and(|s| s.success()) {
        eprintln!("skipped: cannot bind-mount here");
        return;
    }
    let _unmount = Unmount(m.clone());
    let before = snapshot(&t);
    let what = "tree into itself through a bind mount";
    let replies = try_tree(&rd, &t, &m.join("enc"), "bind", what);
    assert!(
        !t.join("enc").exists(),
        "t/enc was created (through m): {}",
        brief(&replies)
    );
    assert!(snapshot(&t) == before, "t changed: {}", brief(&replies));
    assert_inside_refusal(&replies, false);
}

/// (5d) Positive controls: `encrypt -r t -o t2` (a sibling) works, and `rewrap -r t2 -o t2`
/// with `overwrite` (in place) stays allowed.
///
/// Intact: the encrypt ends `done` with 5 files ok, sealed under k1 as asked, each decrypting
/// to its input; the rewrap in place ends `done` with 5 files ok, and each file then names
/// the default key k2 and still decrypts to its input; `t` is unchanged.
fn tree_sibling_output_and_rewrap_in_place(backend: &'static str) {
    let rd = rd(backend).start();
    let ring = rd.ring();
    let t = rd.root.join("t");
    small_tree(&t);
    let before = snapshot(&t);
    let t2 = rd.root.join("t2");
    let mut c = rd.client();
    let enc = with(
        tree_req("encrypt", &t, &t2, "sibling"),
        json!({"key": "k1"}),
    );
    c.send(&enc);
    let end = c.until_end_noting(&rd, "tree to a sibling").pop().unwrap();
    assert_eq!(end["type"], "done", "{end}");
    assert_eq!(end["files_ok"], 5, "{end}");
    assert_eq!(end["files_failed"], 0, "{end}");
    assert_eq!(verify_tree_outputs(&ring, &t, &t2, &rd.scratch()), 5);
    for f in files_under(&t2) {
        assert_eq!(key_id_of(&f), ring_id(&ring, "k1"), "{}", f.display());
    }
    let rewrap = with(
        tree_req("rewrap", &t2, &t2, "in-place"),
        json!({"overwrite": true}),
    );
    c.send(&rewrap);
    let end = c.until_end_noting(&rd, "rewrap in place").pop().unwrap();
    assert_eq!(
        end["type"], "done",
        "rewrap in place must stay allowed: {end}"
    );
    assert_eq!(end["files_ok"], 5, "{end}");
    assert_eq!(verify_tree_outputs(&ring, &t, &t2, &rd.scratch()), 5);
    for f in files_under(&t2) {
        assert_eq!(key_id_of(&f), ring_id(&ring, "k2"), "{}", f.display());
    }
    assert!(snapshot(&t) == before, "the input tree changed");
}

both_backends!(
    tree_rules_agree_between_engines,
    tree_output_inside_input,
    tree_output_is_input,
    tree_output_inside_input_through_bind_mount,
    tree_sibling_output_and_rewrap_in_place,
);

// ---- the same tree rules in both engines --------------------------------------------------

/// An awkward tree, owned by nobody but for one root-only file: names that are not UTF-8,
/// names ending `.rcrypt` at several depths (and one that is nothing but the suffix), a FIFO,
/// a socket, a symlink, an unreadable file and an empty directory.
fn awkward_tree(dir: &Path) {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let named = |rel: &[u8]| dir.join(OsStr::from_bytes(rel));
    for sub in [&b"sub"[..], b"sub/deep", b"empty", b"caf\xe9"] {
        fs::create_dir_all(named(sub)).unwrap();
    }
    for (rel, len) in [
        (&b"a.txt"[..], 100),
        (b"x.rcrypt", 70_000),
        (b".rcrypt", 10),
        (b"\xff\xfe.bin", 0),
        (b"sub/y.rcrypt", 65_536),
        (b"sub/plain", 3),
        (b"sub/deep/z.rcrypt", 1),
        (b"sub/deep/\xe9t\xe9.rcrypt", 500),
        (b"caf\xe9/inner.rcrypt", 17),
    ] {
        fs::write(named(rel), bytes(len, len as u64 + 5)).unwrap();
    }
    mkfifo(&named(b"sub/pipe"));
    drop(std::os::unix::net::UnixListener::bind(named(b"sub/deep/sock")).unwrap());
    std::os::unix::fs::symlink("a.txt", named(b"link")).unwrap();
    let status = Command::new("chown")
        .args(["-R", NOBODY_ARG])
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success(), "chown");
    // Root's own, unreadable to nobody: a failure in both engines, not a skip.
    fs::write(named(b"sub/secret"), b"root only").unwrap();
    chmod(&named(b"sub/secret"), 0o600);
}

/// What a tree job reported, by path relative to its input (bytes shown lossily, as the
/// wire shows them): failures with their codes, skipped entries with their reasons.
#[derive(Debug, PartialEq, Eq)]
struct Verdicts {
    failures: BTreeMap<String, String>,
    skipped: BTreeMap<String, String>,
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// Every file under `dir`, relative, as bytes.
fn tree_listing(dir: &Path) -> Vec<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let mut out: Vec<Vec<u8>> = files_under(dir)
        .iter()
        .map(|p| p.strip_prefix(dir).unwrap().as_os_str().as_bytes().to_vec())
        .collect();
    out.sort();
    out
}

/// (tree rules) The same awkward tree through the offline engine and the daemon's, both as
/// nobody, for encrypt and then decrypt: the same outputs (each decrypting to its input)
/// and the same failures and skipped entries, entry by entry.
///
/// Intact: the input tree (its listing and bytes); no temp files in either output.
fn tree_rules_agree_between_engines(backend: &'static str) {
    if !running_as_root() {
        eprintln!("skipped: needs root to run both engines as nobody");
        return;
    }
    use ringcrypt::protocol::FileOp;
    use ringcrypt::tree::{self, TreeJob};
    let rd = rd(backend).allow_uid(NOBODY).start();
    let base = rd.root.join("t");
    fs::create_dir(&base).unwrap();
    chown_nobody(&base);
    let input = base.join("in");
    fs::create_dir(&input).unwrap();
    awkward_tree(&input);
    let before = snapshot(&input);
    let ring = rd.ring();
    let offline = |op: FileOp, input: &Path, output: &Path| -> Verdicts {
        let job = TreeJob {
            op,
            input,
            output,
            key: None,
            format: ringcrypt::offline::Format::Ringcrypt,
            chunk_log2: 16,
            overwrite: false,
            skip_existing: false,
            partition: None,
            durability: ringcrypt::output::Durability::None,
            workers: 2,
        };
        // The walk and its workers (threads of this one) run with nobody's filesystem
        // identity, as the daemon's path jobs for nobody do.
        let summary = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let caller = ringcrypt::creds::Caller::plain(NOBODY, NOBODY);
                    let _as = ringcrypt::creds::ActAs::enter(&caller).unwrap();
                    tree::run(&ring, &job, |_| {})
                })
                .join()
                .unwrap()
        })
        .expect("the offline tree runs");
        Verdicts {
            failures: summary
                .failures
                .iter()
                .map(|f| (relative(input, &f.path), f.code.as_str().to_string()))
                .collect(),
            skipped: summary
                .skipped
                .iter()
                .map(|s| (relative(input, &s.path), s.reason.clone()))
                .collect(),
        }
    };
    let daemon = |op: &str, input: &Path, output: &Path| -> Verdicts {
        let done = as_nobody(&rd, tree_req(op, input, output, "n"));
        assert_eq!(done["type"], "done", "{done}");
        let list = |key: &str, field: &str| -> BTreeMap<String, String> {
            done[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    let path = Path::new(e["path"].as_str().unwrap());
                    (
                        relative(input, path),
                        e[field].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        };
        Verdicts {
            failures: list("failures", "code"),
            skipped: list("skipped", "reason"),
        }
    };

    let (off_enc, dmn_enc) = (base.join("off.enc"), base.join("dmn.enc"));
    let off = offline(FileOp::Encrypt, &input, &off_enc);
    let dmn = daemon("encrypt", &input, &dmn_enc);
    assert_eq!(off, dmn, "encrypt: the engines disagree");
    assert_eq!(
        off.failures.get("sub/secret").map(String::as_str),
        Some("permission_denied"),
        "{off:?}"
    );
    for special in ["link", "sub/pipe", "sub/deep/sock"] {
        assert!(
            off.skipped.contains_key(special),
            "{special} not skipped: {off:?}"
        );
    }
    assert_eq!(tree_listing(&off_enc), tree_listing(&dmn_enc));
    assert!(
        tree_listing(&off_enc)
            .iter()
            .any(|name| name.as_slice() == b"sub/deep/\xe9t\xe9.rcrypt.rcrypt"),
        "the non-UTF-8 name was not encrypted: {:?}",
        tree_listing(&off_enc)
    );
    assert!(off_enc.join("empty").is_dir() && dmn_enc.join("empty").is_dir());

    // Decrypt what encrypt made: every `.rcrypt` name maps back, the rest is skipped alike.
    let (off_dec, dmn_dec) = (base.join("off.dec"), base.join("dmn.dec"));
    let off = offline(FileOp::Decrypt, &off_enc, &off_dec);
    let dmn = daemon("decrypt", &dmn_enc, &dmn_dec);
    assert_eq!(off, dmn, "decrypt: the engines disagree");
    assert_eq!(tree_listing(&off_dec), tree_listing(&dmn_dec));
    for out in [&off_dec, &dmn_dec] {
        for rel in tree_listing(out) {
            use std::ffi::OsStr;
            use std::os::unix::ffi::OsStrExt;
            let rel = Path::new(OsStr::from_bytes(&rel));
            assert_eq!(
                fs::read(out.join(rel)).unwrap(),
                fs::read(input.join(rel)).unwrap(),
                "{} did not round-trip",
                rel.display()
            );
        }
    }
    // Decrypting the plain input: the `.rcrypt`-named plaintexts fail alike, others skip.
    let (off_bad, dmn_bad) = (base.join("off.bad"), base.join("dmn.bad"));
    let off = offline(FileOp::Decrypt, &input, &off_bad);
    let dmn = daemon("decrypt", &input, &dmn_bad);
    assert_eq!(off, dmn, "decrypt of plaintext: the engines disagree");
    assert!(off.skipped.contains_key(".rcrypt"), "{off:?}");
    assert!(off.failures.contains_key("sub/deep/z.rcrypt"), "{off:?}");
    assert_eq!(snapshot(&input), before, "the input tree changed");
    for out in [&off_enc, &dmn_enc, &off_dec, &dmn_dec, &off_bad, &dmn_bad] {
        assert!(
            temp_files(out).is_empty(),
            "temp files in {}",
            out.display()
        );
    }
}
