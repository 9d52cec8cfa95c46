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

// ---- 6. refused and greedy callers --------------------------------------------------------

/// (6a) (root) The daemon allows only uid 12345 (and root); `nobody`, refused, opens 1,100
/// connections and keeps them open without sending anything.
///
/// Intact: root's `ping` on a new connection gets `pong`, and root's encrypt ends `done`
/// with an output that decrypts to the input.
fn refused_uid_cannot_lock_out_root(backend: &'static str) {
    if !running_as_root() {
        eprintln!("skipped: needs root to run a client as nobody (setpriv)");
        return;
    }
    let rd = rd(backend).allow_uid(12345).start();
    let (holder, summary) = nobody_hold(&rd.socket, 1100, false);
    eprintln!("{backend}: nobody's connections: {summary}");
    let pong = rd.ping();
    assert_eq!(
        pong["type"], "pong",
        "root locked out by nobody's {} idle connections: {pong}",
        summary["opened"]
    );
    let input = rd.root.join("root.txt");
    let plain = bytes(3000, 61);
    fs::write(&input, &plain).unwrap();
    let output = rd.root.join("root.rc");
    let end = rd.encrypt(&input, &output, json!({}));
    assert_eq!(end["type"], "done", "{end}");
    assert_decrypts_to(&rd.ring(), &output, &plain, &rd.scratch().join("s"));
    drop(holder);
}

/// (6b) (root) A refused caller gets exactly one reply, then the daemon closes: as `nobody`
/// (the daemon allows only 12345), an encrypt gets one `permission_denied` line then EOF; a
/// `ping` gets `pong` then EOF; each EOF within 5 s, the client never closing first.
///
/// Intact: no output is created for the refused encrypt.
fn refused_caller_gets_one_reply_then_eof(backend: &'static str) {
    if !running_as_root() {
        eprintln!("skipped: needs root to run a client as nobody (setpriv)");
        return;
    }
    let rd = rd(backend).allow_uid(12345).start();
    let input = rd.root.join("x.txt");
    fs::write(&input, b"x").unwrap();
    chmod(&input, 0o644);
    let output = rd.root.join("x.rc");
    let session = nobody_session(
        &rd.socket,
        "eof",
        5,
        &[with(file_req("encrypt", &input, &output), json!({"id": 1}))],
    );
    assert_eq!(session.replies.len(), 1, "{session:?}");
    assert_eq!(
        code(&session.replies[0]),
        "permission_denied",
        "{session:?}"
    );
    assert!(!output.exists());
    assert!(
        session.end.starts_with("#EOF"),
        "refused encrypt: the daemon did not close the connection within 5 s: {session:?}"
    );
    let session = nobody_session(&rd.socket, "eof", 5, &[json!({"op": "ping", "id": 2})]);
    assert_eq!(session.replies.len(), 1, "{session:?}");
    assert_eq!(session.replies[0]["type"], "pong", "{session:?}");
    assert!(
        session.end.starts_with("#EOF"),
        "refused caller's ping: the daemon did not close the connection within 5 s: {session:?}"
    );
}

/// (6c) (root) A per-uid limit: `nobody`, allowed (`--allow-uid 65534`), opens 1,100
/// connections with a `ping` on each and keeps them open.
///
/// Intact: some of nobody's connections are answered `pong` and some refused `busy`; root's
/// `ping` on a new connection still gets `pong`.
fn allowed_uid_connection_limit(backend: &'static str) {
    if !running_as_root() {
        eprintln!("skipped: needs root to run a client as nobody (setpriv)");
        return;
    }
    let rd = rd(backend).allow_uid(NOBODY).start();
    let (holder, summary) = nobody_hold(&rd.socket, 1100, true);
    eprintln!("{backend}: nobody's connections: {summary}");
    assert!(
        summary["pong"].as_u64() > Some(0),
        "nobody is allowed: {summary}"
    );
    assert!(
        summary["busy"].as_u64() > Some(0),
        "no per-uid limit: {summary}"
    );
    let pong = rd.ping();
    assert_eq!(
        pong["type"], "pong",
        "root locked out by nobody's connections ({summary}): {pong}"
    );
    drop(holder);
}

// ---- 7. the daemon acts with the caller's rights (confused deputy) -----------------------

/// The layout for the confused-deputy tests under the daemon's root:
///
/// ```text
/// pub/        nobody 0755, with in.txt (nobody 0644)
/// secret/     root 0700, with f (0644)
/// locked/     root 0700, empty
/// shared/     root 0755, with victim (root 0600)
/// ```
struct Deputy {
    rd: Daemon,
    public: PathBuf,
    input: PathBuf,
    plain: Vec<u8>,
}

fn deputy(backend: &'static str) -> Option<Deputy> {
    if !running_as_root() {
        eprintln!("skipped: needs root to run a client as nobody (setpriv)");
        return None;
    }
    let rd = rd(backend).allow_uid(NOBODY).start();
    let plain = bytes(5000, 77);
    let (public, input) = nobody_pub(&rd, &plain);
    let secret = rd.root.join("secret");
    fs::create_dir(&secret).unwrap();
    fs::write(secret.join("f"), b"root's secret").unwrap();
    chmod(&secret.join("f"), 0o644);
    chmod(&secret, 0o700);
    let locked = rd.root.join("locked");
    fs::create_dir(&locked).unwrap();
    chmod(&locked, 0o700);
    let shared = rd.root.join("shared");
    fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o755);
    fs::write(shared.join("victim"), b"root's data").unwrap();
    chmod(&shared.join("victim"), 0o600);
    Some(Deputy {
        rd,
        public,
        input,
        plain,
    })
}

/// (7a) (root) nobody names an input inside a 0700 root-owned directory.
///
/// Intact: `permission_denied`; nothing appears in nobody's directory.
fn deputy_unreadable_input(backend: &'static str) {
    let Some(d) = deputy(backend) else { return };
    let before = snapshot(&d.public);
    let end = as_nobody(
        &d.rd,
        file_req(
            "encrypt",
            &d.rd.root.join("secret/f"),
            &d.public.join("stolen.rc"),
        ),
    );
    assert!(
        !d.public.join("stolen.rc").exists(),
        "root's file was read for nobody: {end}"
    );
    assert!(snapshot(&d.public) == before, "{end}");
    assert_eq!(end["type"], "error", "{end}");
    assert_eq!(code(&end), "permission_denied", "{end}");
}

/// (7b) (root) nobody names an output in a 0700 root-owned directory.
///
/// Intact: `permission_denied`; the directory stays empty.
fn deputy_unwritable_output_dir(backend: &'static str) {
    let Some(d) = deputy(backend) else { return };
    let locked = d.rd.root.join("locked");
    let end = as_nobody(
        &d.rd,
        file_req("encrypt", &d.input, &locked.join("planted.rc")),
    );
    let left: Vec<_> = fs::read_dir(&locked).unwrap().collect();
    assert!(
        left.is_empty(),
        "written into root's 0700 directory: {left:?}; {end}"
    );
    assert_eq!(end["type"], "error", "{end}");
    assert_eq!(code(&end), "permission_denied", "{end}");
}

/// (7c) (root) nobody asks to `overwrite` root's 0600 file in a root-owned 0755 directory.
///
/// Intact: `permission_denied`; the file keeps its bytes, mode 0600 and owner root, and
/// nothing else appears in the directory.
fn deputy_overwrite_of_roots_file(backend: &'static str) {
    let Some(d) = deputy(backend) else { return };
    let shared = d.rd.root.join("shared");
    let victim = shared.join("victim");
    let end = as_nobody(
        &d.rd,
        with(
            file_req("encrypt", &d.input, &victim),
            json!({"overwrite": true}),
        ),
    );
    assert!(
        fs::read(&victim).unwrap() == b"root's data",
        "root's file was replaced: {end}"
    );
    assert_eq!(mode_of(&victim), 0o600, "{end}");
    assert_eq!(fs::metadata(&victim).unwrap().uid(), 0, "{end}");
    assert_eq!(fs::read_dir(&shared).unwrap().count(), 1, "{end}");
    assert_eq!(end["type"], "error", "{end}");
    assert_eq!(code(&end), "permission_denied", "{end}");
}

/// (7d) (root) Positive control: nobody encrypts its own file into its own directory.
///
/// Intact: `done`; the output belongs to uid 65534 and decrypts to the input.
fn deputy_own_file_is_served(backend: &'static str) {
    let Some(d) = deputy(backend) else { return };
    let output = d.public.join("in.txt.rc");
    let end = as_nobody(&d.rd, file_req("encrypt", &d.input, &output));
    assert_eq!(end["type"], "done", "{end}");
    assert_decrypts_to(&d.rd.ring(), &output, &d.plain, &d.rd.scratch().join("s"));
    assert_eq!(
        fs::metadata(&output).unwrap().uid(),
        NOBODY,
        "the output was made with the daemon's uid, not the caller's"
    );
}

/// (7e) (root) A tree as nobody: nobody's directory with four files (two in a subdirectory)
/// and a 0700 root-owned subdirectory `priv` with two files, encrypted into nobody's `pub`.
///
/// Intact: the tree ends `done` with files_ok 4; `priv` (or its files) is listed in
/// `failures` with `permission_denied` and nothing else fails; no output exists for
/// `priv`'s files; the four outputs decrypt to their inputs.
fn deputy_tree_skips_what_nobody_cannot_read(backend: &'static str) {
    let Some(d) = deputy(backend) else { return };
    let tree = d.rd.root.join("ntree");
    for sub in ["", "sub"] {
        let dir = tree.join(sub);
        fs::create_dir_all(&dir).unwrap();
        chmod(&dir, 0o755);
        chown_nobody(&dir);
        for (i, name) in ["a", "b"].iter().enumerate() {
            let f = dir.join(name);
            fs::write(&f, bytes(700 + i, 90 + i as u64 + sub.len() as u64)).unwrap();
            chmod(&f, 0o644);
            chown_nobody(&f);
        }
    }
    let private = tree.join("priv");
    fs::create_dir(&private).unwrap();
    for name in ["x", "y"] {
        fs::write(private.join(name), b"root only").unwrap();
        chmod(&private.join(name), 0o644);
    }
    chmod(&private, 0o700);
    let out = d.public.join("ntree.rcrypt");
    let end = as_nobody(&d.rd, tree_req("encrypt", &tree, &out, "n"));
    let leaked: Vec<_> = files_under(&out.join("priv"));
    assert!(
        leaked.is_empty(),
        "root's files encrypted for nobody: {leaked:?}; {end}"
    );
    assert_eq!(end["type"], "done", "{end}");
    assert_eq!(end["files_ok"], 4, "{end}");
    let failures = end["failures"].as_array().expect("failures");
    assert!(!failures.is_empty(), "priv is not reported: {end}");
    for failure in failures {
        let path = failure["path"].as_str().unwrap_or("");
        assert!(path.contains("/priv"), "an unexpected failure: {failure}");
        assert_eq!(failure["code"], "permission_denied", "{failure}");
    }
    assert_eq!(
        verify_tree_outputs(&d.rd.ring(), &tree, &out, &d.rd.scratch()),
        4
    );
}

both_backends!(
    refused_uid_cannot_lock_out_root,
    refused_caller_gets_one_reply_then_eof,
    allowed_uid_connection_limit,
    deputy_unreadable_input,
    deputy_unwritable_output_dir,
    deputy_overwrite_of_roots_file,
    deputy_own_file_is_served,
    deputy_tree_skips_what_nobody_cannot_read,
);
