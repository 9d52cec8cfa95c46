//! The directories a tree job holds open while their files are processed (`held_dirs.rs`):
//! each file is opened by its name in its input directory as the walk opened it, and its
//! output created and linked in the output directory as the walk made it.
//!
//! Checked, under both backends: while one thread swaps files and a subdirectory of the
//! input tree with symbolic links to outside the root (atomically, `RENAME_EXCHANGE`), and
//! an output subdirectory with a link to outside, tree jobs never read or write outside the
//! root: every output decrypts to an inside file's content, the outside directory keeps
//! exactly its own files, and a file refused says `forbidden_path` or `not_found`. And the
//! held directories close with the tree: once a tree is done, the daemon holds no more
//! descriptors than before it started. Outputs are linked by their descriptor
//! (`AT_EMPTY_PATH`), or, where the kernel refuses that (played by the
//! `RINGCRYPT_TEST_NO_LINK_BY_FD` hook), through `/proc/self/fd`: both give the same outputs
//! (bytes, mode, mtime), an overwrite replaces the old output, and no temp file is left.

#[macro_use]
mod support;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

/// Input subdirectories of the race tree, and files in each.
const DIRS: usize = 4;
const FILES_PER_DIR: usize = 40;

/// Tree jobs run during the swaps.
const TREES: usize = 12;

const SECRET: &[u8] = b"OUTSIDE SECRET";

fn inside_content(dir: usize, file: usize) -> Vec<u8> {
    format!("inside d{dir} f{file}").into_bytes()
}

/// Swaps `a` and `b` (either may be a symlink) in one step.
fn exchange(a: &Path, b: &Path) {
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        a,
        rustix::fs::CWD,
        b,
        rustix::fs::RenameFlags::EXCHANGE,
    )
    .unwrap();
}

/// Every regular file under `dir`, recursively (symbolic links are not followed).
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            files_under(&entry.path(), out);
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
}

fn swaps_never_leave_the_root(backend: &'static str) {
    let d = Daemon::start(backend);
    let (root, outside) = (d.root.clone(), d.outside.clone());
    let src = root.join("src");
    let out = root.join("out");
    for dir in 0..DIRS {
        fs::create_dir_all(src.join(format!("d{dir}"))).unwrap();
        for file in 0..FILES_PER_DIR {
            let path = src.join(format!("d{dir}/f{file}"));
            fs::write(path, inside_content(dir, file)).unwrap();
        }
    }
    // Outside: a file and a directory of files with the names the tree uses.
    fs::write(outside.join("f"), SECRET).unwrap();
    fs::create_dir(outside.join("dir")).unwrap();
    for file in 0..FILES_PER_DIR {
        fs::write(outside.join(format!("dir/f{file}")), SECRET).unwrap();
    }
    let outside_before = {
        let mut names = Vec::new();
        files_under(&outside, &mut names);
        names.sort();
        names
    };
    // The links that are swapped in: files of d0 with a link to the outside file, d1 with
    // a link to the outside directory, and the output's d2 with the same.
    for file in 0..FILES_PER_DIR {
        symlink(outside.join("f"), src.join(format!("d0/l{file}"))).unwrap();
    }
    symlink(outside.join("dir"), src.join("alt")).unwrap();
    fs::create_dir_all(out.join("d2")).unwrap();
    symlink(outside.join("dir"), out.join("alt")).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let flipper = {
        let (src, out, stop) = (src.clone(), out.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let file = (swaps as usize) % FILES_PER_DIR;
                exchange(
                    &src.join(format!("d0/f{file}")),
                    &src.join(format!("d0/l{file}")),
                );
                exchange(&src.join("d1"), &src.join("alt"));
                exchange(&out.join("d2"), &out.join("alt"));
                swaps += 1;
            }
            swaps
        })
    };
    let mut client = d.client();
    let (mut ok, mut refused) = (0u64, 0u64);
    for n in 0..TREES {
        let request = with(
            tree_req("encrypt", &src, &out, &format!("t{n}")),
            json!({"overwrite": true}),
        );
        let replies = client.job(&request);
        let done = replies.last().unwrap();
        assert_eq!(done["type"], "done", "{}", brief(&replies));
        ok += done["files_ok"].as_u64().unwrap();
        for failure in done["failures"].as_array().unwrap() {
            let code = failure["code"].as_str().unwrap();
            assert!(
                ["forbidden_path", "not_found"].contains(&code),
                "unexpected failure during the swaps: {failure}"
            );
            refused += 1;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let swaps = flipper.join().unwrap();
    println!("{TREES} trees during {swaps} swaps: {ok} files done, {refused} refused");
    assert!(swaps > 0 && ok > 0, "the trees ran while the swaps did");

    // Outside: exactly its own files, each still the secret.
    let mut outside_after = Vec::new();
    files_under(&outside, &mut outside_after);
    outside_after.sort();
    assert_eq!(
        outside_after, outside_before,
        "something was written outside"
    );
    for path in &outside_after {
        assert_eq!(
            fs::read(path).unwrap(),
            SECRET,
            "{} changed",
            path.display()
        );
    }
    // Inside: every output is sealed inside content, never the outside's.
    let inside: Vec<Vec<u8>> = (0..DIRS)
        .flat_map(|dir| (0..FILES_PER_DIR).map(move |file| inside_content(dir, file)))
        .collect();
    let ring = d.ring();
    let mut outputs = Vec::new();
    files_under(&out, &mut outputs);
    assert!(!outputs.is_empty(), "no output was made");
    for path in &outputs {
        let data = fs::read(path).unwrap();
        let mut plain = Vec::new();
        ringcrypt::stream::open(&mut &data[..], data.len() as u64, &ring, &mut plain).unwrap();
        assert!(
            inside.contains(&plain),
            "{} holds bytes from outside the root: {:?}",
            path.display(),
            String::from_utf8_lossy(&plain)
        );
    }
    assert!(temp_files(d.dir.path()).is_empty());
}

/// Descriptors the process `pid` holds.
fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

fn held_directories_close_with_the_tree(backend: &'static str) {
    let d = Daemon::start(backend);
    let src = d.root.join("src");
    let (dirs, per_dir) = (30, 10);
    for dir in 0..dirs {
        let sub = src.join(format!("a{}/b{dir}", dir % 3));
        fs::create_dir_all(&sub).unwrap();
        for file in 0..per_dir {
            fs::write(sub.join(format!("f{file}")), bytes(100 + file, file as u64)).unwrap();
        }
    }
    assert_eq!(d.ping()["type"], "pong");
    let before = open_fds(d.pid());
    let mut client = d.client();
    for (op, from, to) in [("encrypt", "src", "enc"), ("decrypt", "enc", "dec")] {
        let request = tree_req(op, &d.root.join(from), &d.root.join(to), op);
        let replies = client.job(&request);
        let done: &Value = replies.last().unwrap();
        assert_eq!(done["files_ok"], (dirs * per_dir) as u64, "{done}");
        assert_eq!(done["files_failed"], 0, "{done}");
    }
    // The round trip is exact.
    for dir in 0..dirs {
        for file in 0..per_dir {
            let rel = format!("a{}/b{dir}/f{file}", dir % 3);
            assert_eq!(
                fs::read(d.root.join("dec").join(&rel)).unwrap(),
                bytes(100 + file, file as u64),
                "{rel}"
            );
        }
    }
    // The client's connection is the one descriptor more it may hold.
    let until = Instant::now() + Duration::from_secs(5);
    let mut now = open_fds(d.pid());
    while now > before + 1 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
        now = open_fds(d.pid());
    }
    assert!(
        now <= before + 1,
        "the daemon held {before} descriptors before the trees and {now} after"
    );
    drop(client);
}

/// (mode bits, mtime in seconds, bytes) of `path`.
fn kept(path: &Path) -> (u32, i64, Vec<u8>) {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::symlink_metadata(path).unwrap();
    (meta.mode() & 0o7777, meta.mtime(), fs::read(path).unwrap())
}

/// A tree and an overwrite, linked by descriptor or through `/proc` (`refused`).
fn links_both_ways(backend: &'static str, refused: bool) {
    let mut builder = Daemon::builder(backend);
    if refused {
        builder = builder.env("RINGCRYPT_TEST_NO_LINK_BY_FD", "1");
    }
    let d = builder.start();
    let src = d.root.join("src");
    let mut files = Vec::new();
    for i in 0..60usize {
        let rel = PathBuf::from(format!("s{}/f{i}", i % 4));
        let path = src.join(&rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, bytes(i * 97, i as u64)).unwrap();
        chmod(&path, if i % 2 == 0 { 0o640 } else { 0o604 });
        let when = std::time::UNIX_EPOCH + Duration::from_secs(1_500_000_000 + i as u64);
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(when)
            .unwrap();
        files.push(rel);
    }
    let mut client = d.client();
    for (op, from, to) in [("encrypt", "src", "enc"), ("decrypt", "enc", "dec")] {
        let request = tree_req(op, &d.root.join(from), &d.root.join(to), op);
        let replies = client.job(&request);
        let done: &Value = replies.last().unwrap();
        assert_eq!(done["files_ok"], files.len() as u64, "{done}");
        assert_eq!(done["files_failed"], 0, "{done}");
    }
    for rel in &files {
        assert_eq!(
            kept(&d.root.join("dec").join(rel)),
            kept(&src.join(rel)),
            "{} differs (mode, mtime, bytes)",
            rel.display()
        );
    }
    // An overwrite links under a temp name and renames it over the old output.
    let (input, output) = (src.join(&files[7]), d.root.join("dec").join(&files[9]));
    let done = d.encrypt(&input, &output, json!({"overwrite": true}));
    assert_eq!(done["type"], "done", "{done}");
    let sealed = fs::read(&output).unwrap();
    let mut plain = Vec::new();
    ringcrypt::stream::open(&mut &sealed[..], sealed.len() as u64, &d.ring(), &mut plain).unwrap();
    assert_eq!(
        plain,
        fs::read(&input).unwrap(),
        "the overwrite replaced the output"
    );
    assert!(temp_files(d.dir.path()).is_empty());
}

fn links_by_descriptor(backend: &'static str) {
    links_both_ways(backend, false);
}

fn links_through_proc_where_refused(backend: &'static str) {
    links_both_ways(backend, true);
}

both_backends!(
    swaps_never_leave_the_root,
    held_directories_close_with_the_tree,
    links_by_descriptor,
    links_through_proc_where_refused,
);
