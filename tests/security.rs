//! Caller checks and key hygiene of the real daemon (README "Security").
//!
//! Checked: a client whose uid is not on `--allow-uid` is refused with `permission_denied`
//! (its `ping` still answers), an allowed uid is served, root always is; every request is
//! audited with the caller's uid and op and never with key material; `reload` needs root or
//! the daemon's uid; the daemon is not dumpable (no core dumps or ptrace of key memory).
//! The client runs as `nobody` through `setpriv`, so this needs root; as another user the
//! test says so and checks only what it can.

#[macro_use]
mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::*;

/// A daemon on a directory under /tmp that `nobody` can reach, which is also its only
/// allowed root, with one key `k`, `--metrics off --shards 1` and the daemon's default
/// `--fsync`; SIGTERMed and reaped on drop. The socket is made 0666 once it listens: the
/// daemon, not the file mode, is what decides.
fn daemon() -> Builder {
    Builder::new()
        .for_nobody()
        .prefix("ringcrypt-sec")
        .root_is_dir()
        .ring(keygen("k"))
        .metrics("off")
        .shards(1)
        .default_fsync()
        .at_drop(AtDrop::Reap)
}

fn start(allow_uid: Option<u32>) -> Daemon {
    match allow_uid {
        Some(uid) => daemon().allow_uid(uid),
        None => daemon(),
    }
    .start()
}

#[test]
fn callers_off_the_allow_list_are_refused_and_audited() {
    if !running_as_root() {
        eprintln!("skipped: needs root to run the client as another uid (setpriv)");
        return;
    }
    let daemon = start(Some(4242));
    let dir = &daemon.root;
    std::fs::write(dir.join("in.txt"), b"data").unwrap();

    // nobody: ping answers (health checks are open), everything else is refused.
    let ping = ringcrypt_as_nobody(&daemon.socket, &["ping"]);
    assert!(ping.status.success(), "{ping:?}");
    let keys = ringcrypt_as_nobody(&daemon.socket, &["keys"]);
    assert_eq!(keys.status.code(), Some(1), "{keys:?}");
    let stderr = String::from_utf8_lossy(&keys.stderr);
    assert!(
        stderr.contains("[permission_denied]") && stderr.contains("allow_uids"),
        "{stderr}"
    );
    let enc = ringcrypt_as_nobody(
        &daemon.socket,
        &["encrypt", "/tmp/none-such", "-o", "/tmp/none-such.rcrypt"],
    );
    assert_eq!(enc.status.code(), Some(1), "{enc:?}");
    assert!(!dir.join("in.txt.rcrypt").exists());

    // root is always allowed.
    let input = dir.join("in.txt");
    let reply = Client::open(&daemon.socket, Duration::from_secs(10)).call(&file_req(
        "encrypt",
        &input,
        &dir.join("in.txt.rcrypt"),
    ));
    assert!(reply.to_string().contains("accepted"), "{reply}");

    let log = std::fs::read_to_string(&daemon.log).unwrap();
    let nobody = uid_of("nobody");
    assert!(
        log.contains(&format!("audit: refused uid={nobody}")),
        "{log}"
    );
    assert!(log.contains("op=keys"), "{log}");
    assert!(
        log.contains("audit: accepted uid=0") && log.contains("op=encrypt"),
        "{log}"
    );
    let secret = std::fs::read_to_string(&daemon.keys).unwrap();
    let hex = secret
        .split('"')
        .find(|part| part.len() == 64)
        .expect("the secret");
    assert!(!log.contains(hex), "key material in the log");
}

#[test]
fn an_allowed_uid_is_served_but_reload_stays_admin_only() {
    if !running_as_root() {
        eprintln!("skipped: needs root to run the client as another uid (setpriv)");
        return;
    }
    let daemon = start(Some(uid_of("nobody")));
    let keys = ringcrypt_as_nobody(&daemon.socket, &["keys"]);
    assert!(keys.status.success(), "{keys:?}");
    let reload = ringcrypt_as_nobody(&daemon.socket, &["reload"]);
    assert_eq!(reload.status.code(), Some(1), "{reload:?}");
    assert!(String::from_utf8_lossy(&reload.stderr).contains("[permission_denied]"));
}

#[test]
fn the_daemon_is_not_dumpable() {
    // For a non-dumpable process the kernel makes root the owner of /proc/PID/*; so run the
    // daemon as nobody and look at who owns its /proc files. No core dump, no ptrace by
    // other processes of the same uid, so key memory stays in the daemon.
    if !running_as_root() {
        eprintln!("skipped: needs root to run the daemon as nobody (setpriv)");
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let mut daemon = daemon().wrap(|cmd| through_shell(cmd, "", true)).prepare();
    chown_r_nobody(daemon.dir.path());
    daemon.launch();
    let pid = daemon.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let nobody = uid_of("nobody");
    assert!(
        status.contains(&format!("Uid:\t{nobody}")),
        "the daemon runs as nobody: {status}"
    );
    let owner = std::fs::metadata(format!("/proc/{pid}/environ"))
        .unwrap()
        .uid();
    assert_eq!(
        owner, 0,
        "/proc/{pid} is owned by its uid: the daemon is still dumpable"
    );
}

/// Sends one job and returns its reply lines up to its `done` or `error`.
fn job_replies(socket: &Path, request: &Value) -> String {
    let replies = Client::open(socket, Duration::from_secs(30)).job(request);
    replies
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A disk that fills up mid-write: `no_space`, no partial output, no temp file, the
/// daemon keeps serving, and the next job fits once there is room. Needs root to mount a
/// small tmpfs; otherwise the test says so.
#[test]
fn a_full_disk_gives_no_space_and_leaves_nothing() {
    if !running_as_root() {
        eprintln!("skipped: needs root to mount a small tmpfs");
        return;
    }
    let mut daemon = daemon().prepare();
    let dir = daemon.root.clone();
    let small = dir.join("small");
    std::fs::create_dir(&small).unwrap();
    if !mount_tmpfs(&small, "8m") {
        eprintln!("skipped: cannot mount a tmpfs here (no mount permission in this container)");
        return;
    }
    let _unmount = Unmount(small.clone());
    daemon.launch();
    let big = dir.join("big.bin");
    std::fs::write(&big, vec![0x5a; 20 << 20]).unwrap();
    let replies = job_replies(
        &daemon.socket,
        &file_req("encrypt", &big, &small.join("big.rcrypt")),
    );
    assert!(replies.contains("\"code\":\"no_space\""), "{replies}");
    let left: Vec<_> = std::fs::read_dir(&small).unwrap().collect();
    assert!(left.is_empty(), "the full disk kept {left:?}");
    // The space came back with the temp file: a job that fits succeeds.
    let fits = dir.join("fits.bin");
    std::fs::write(&fits, vec![1u8; 1 << 20]).unwrap();
    let replies = job_replies(
        &daemon.socket,
        &file_req("encrypt", &fits, &small.join("fits.rcrypt")),
    );
    assert!(replies.contains("\"done\""), "{replies}");
    assert!(small.join("fits.rcrypt").exists());
    drop(daemon);
}

/// A race against path confinement: one thread swaps a directory and a symlink to outside
/// the root (atomically, renameat2 RENAME_EXCHANGE) 100,000 times while jobs read through it
/// and write through a second flipping path. Intact: every output that exists holds the
/// inside file's content (never the outside file's), nothing is written outside the root,
/// and refused jobs say `forbidden_path`.
#[test]
fn symlink_races_never_leave_the_root() {
    use std::os::unix::fs::symlink;
    // The root is `root/` here, beside `outside/`, with one shard per core.
    let mut daemon = Builder::new()
        .for_nobody()
        .prefix("ringcrypt-sec")
        .ring(keygen("k"))
        .metrics("off")
        .default_shards()
        .at_drop(AtDrop::Reap)
        .prepare();
    let (root, outside) = (daemon.root.clone(), daemon.outside.clone());
    std::fs::create_dir_all(root.join("real")).unwrap();
    std::fs::create_dir_all(root.join("realout")).unwrap();
    std::fs::write(root.join("real/f"), b"inside").unwrap();
    std::fs::write(outside.join("f"), b"OUTSIDE SECRET").unwrap();
    // `flip` and `flipout` start as directories; `alt` and `altout` are symlinks out.
    std::fs::rename(root.join("real"), root.join("flip")).unwrap();
    std::fs::rename(root.join("realout"), root.join("flipout")).unwrap();
    symlink(&outside, root.join("alt")).unwrap();
    symlink(&outside, root.join("altout")).unwrap();

    daemon.launch();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flipper = {
        let root = root.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            use rustix::fs::{CWD, RenameFlags};
            for i in 0..100_000u32 {
                let (a, b) = if i % 2 == 0 {
                    ("flip", "alt")
                } else {
                    ("flipout", "altout")
                };
                rustix::fs::renameat_with(
                    CWD,
                    root.join(a),
                    CWD,
                    root.join(b),
                    RenameFlags::EXCHANGE,
                )
                .unwrap();
            }
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let mut stream = UnixStream::connect(&daemon.socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let (mut done, mut refused, mut n) = (0, 0, 0);
    while !stop.load(std::sync::atomic::Ordering::SeqCst) || n < 200 {
        // Read through the flipping directory; write through the other one.
        let line = format!(
            "{{\"op\":\"encrypt\",\"input\":\"{}\",\"output\":\"{}\"}}\n",
            root.join("flip/f").display(),
            root.join(format!("flipout/o{n}.rcrypt")).display()
        );
        stream.write_all(line.as_bytes()).unwrap();
        let mut reply = String::new();
        loop {
            reply.clear();
            reader.read_line(&mut reply).unwrap();
            if reply.contains("\"done\"") {
                done += 1;
                break;
            }
            if reply.contains("\"error\"") {
                assert!(
                    ["forbidden_path", "not_found", "exists"]
                        .iter()
                        .any(|code| reply.contains(code)),
                    "unexpected refusal: {reply}"
                );
                refused += 1;
                break;
            }
        }
        n += 1;
    }
    flipper.join().unwrap();
    daemon.end();
    println!("{n} jobs during the flips: {done} done, {refused} refused");

    // Nothing was written outside; every output decrypts to the inside content.
    let names: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("f")],
        "something was written outside the root"
    );
    assert_eq!(std::fs::read(outside.join("f")).unwrap(), b"OUTSIDE SECRET");
    let ring = daemon.ring();
    let mut checked = 0;
    for side in ["flip", "flipout", "alt", "altout"] {
        let path = root.join(side);
        if path.is_symlink() {
            continue;
        }
        for entry in std::fs::read_dir(&path).unwrap() {
            let entry = entry.unwrap();
            let data = std::fs::read(entry.path()).unwrap();
            if entry.file_name() == "f" {
                assert_eq!(data, b"inside");
                continue;
            }
            let mut plain = Vec::new();
            ringcrypt::stream::open(&mut &data[..], data.len() as u64, &ring, &mut plain).unwrap();
            assert_eq!(
                plain,
                b"inside",
                "{} holds a byte from outside the root",
                entry.path().display()
            );
            checked += 1;
        }
    }
    assert_eq!(
        checked, done,
        "every done job left one verified output inside the root"
    );
}

#[test]
fn passed_descriptors_carry_the_callers_own_permissions() {
    if !running_as_root() {
        eprintln!("skipped: needs root to run the client as another uid (setpriv)");
        return;
    }
    let nobody = uid_of("nobody");
    let nogroup = gid_of("nobody");
    let daemon = start(Some(nobody));
    let dir = &daemon.root;
    // nobody's own directory and file, and a root-only file and directory beside them, all
    // under the daemon's allowed root: the daemon (root) could read and write every one.
    let home = dir.join("home");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mine = home.join("mine.txt");
    std::fs::write(&mine, b"nobody's data").unwrap();
    std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&mine, Some(nobody), Some(nogroup)).unwrap();
    std::os::unix::fs::chown(&home, Some(nobody), Some(nogroup)).unwrap();
    let secret = dir.join("root-secret.txt");
    std::fs::write(&secret, b"root only").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let locked = dir.join("root-only");
    std::fs::create_dir(&locked).unwrap();
    let p = |path: &Path| path.to_str().unwrap().to_string();

    // Its own file: encrypted, and the output belongs to nobody, not to the daemon's uid.
    let own = ringcrypt_as_nobody(&daemon.socket, &["encrypt", &p(&mine)]);
    assert!(own.status.success(), "{own:?}");
    let sealed = std::fs::metadata(home.join("mine.txt.rcrypt")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&sealed),
        nobody,
        "the caller made the output file"
    );

    // A file nobody cannot read: refused by the kernel when the client opens it, so the
    // daemon never hears of it and nothing is written.
    let out = home.join("stolen.rcrypt");
    let read = ringcrypt_as_nobody(&daemon.socket, &["encrypt", &p(&secret), "-o", &p(&out)]);
    assert_eq!(read.status.code(), Some(1), "{read:?}");
    let stderr = String::from_utf8_lossy(&read.stderr);
    assert!(stderr.contains("permission_denied"), "{stderr}");
    assert!(!out.exists(), "nothing was written");

    // A directory nobody cannot write: refused when the client makes its temp file there.
    let planted = locked.join("planted.rcrypt");
    let write = ringcrypt_as_nobody(&daemon.socket, &["encrypt", &p(&mine), "-o", &p(&planted)]);
    assert_eq!(write.status.code(), Some(1), "{write:?}");
    let stderr = String::from_utf8_lossy(&write.stderr);
    assert!(stderr.contains("permission_denied"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(&locked).unwrap().count(),
        0,
        "nothing appeared"
    );

    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(
        log.contains(&format!("audit: accepted uid={nobody}")) && log.contains(" fds "),
        "{log}"
    );
    assert!(
        !log.contains("root-secret") && !log.contains("planted"),
        "refused by the kernel, the requests never reached the daemon: {log}"
    );
    assert_eq!(std::fs::read(&secret).unwrap(), b"root only");
}
