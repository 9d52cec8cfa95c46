//! systemd integration without systemd: the real `ringcryptd` under the real
//! `systemd-socket-activate` (socket activation), with a test `NOTIFY_SOCKET` listener and
//! `WATCHDOG_USEC`.
//!
//! Checked: `READY=1` arrives, and once it has, the inherited socket answers `ping`;
//! `WATCHDOG=1` keeps arriving while the shards loop and stops when one is wedged (a
//! debug-build hook); `STATUS=` lines arrive; `STOPPING=1` arrives on SIGTERM and the daemon
//! exits 0.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

struct Setup {
    dir: tempfile::TempDir,
    socket: PathBuf,
    keys: PathBuf,
    notify: UnixDatagram,
    notify_path: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    write_private(&keys, &keygen("n"));
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    Setup {
        socket: dir.path().join("s.sock"),
        dir,
        keys,
        notify,
        notify_path,
    }
}

fn activate(setup: &Setup, watchdog_usec: u64, hang: Option<&str>) -> Child {
    let tool = on_path("systemd-socket-activate").unwrap_or_else(|| {
        panic!("systemd-socket-activate is missing: .ci/run installs Debian's systemd package")
    });
    let mut cmd = Command::new(tool);
    cmd.arg("-l")
        .arg(&setup.socket)
        .args(["-E", "NOTIFY_SOCKET", "-E", "WATCHDOG_USEC"])
        .env("NOTIFY_SOCKET", &setup.notify_path)
        .env("WATCHDOG_USEC", watchdog_usec.to_string());
    if let Some(hang) = hang {
        cmd.args(["-E", "RINGCRYPT_TEST_HANG_SHARD"])
            .env("RINGCRYPT_TEST_HANG_SHARD", hang);
    }
    cmd.arg(DAEMON)
        .arg("--socket")
        .arg(&setup.socket)
        .arg("--keys")
        .arg(&setup.keys)
        .arg("--allow-root")
        .arg(setup.dir.path())
        .args(["--shards", "2", "--metrics", "off"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Notifications received within `within`.
fn collect(notify: &UnixDatagram, within: Duration) -> Vec<String> {
    let end = Instant::now() + within;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        if let Ok(n) = notify.recv(&mut buf) {
            out.extend(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(str::to_string),
            );
        }
    }
    out
}

fn ping(socket: &Path) -> String {
    // The socket file appears at bind(), a moment before systemd-socket-activate listens.
    let end = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match UnixStream::connect(socket) {
            Ok(stream) => break stream,
            Err(err)
                if err.kind() == std::io::ErrorKind::ConnectionRefused && Instant::now() < end =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(err) => panic!("the activated socket does not accept: {err}"),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(b"{\"op\":\"ping\",\"id\":1}\n").unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    line
}

fn wait_for_socket(socket: &Path) {
    let end = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(
            Instant::now() < end,
            "systemd-socket-activate never made {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    sigterm_within(child, Duration::from_secs(40))
        .unwrap_or_else(|| panic!("the daemon did not exit within 40 s of SIGTERM"))
}

#[test]
fn socket_activation_ready_watchdog_status_and_stopping() {
    let setup = setup();
    let mut child = activate(&setup, 400_000, None);
    wait_for_socket(&setup.socket);
    // systemd-socket-activate starts the daemon on the first connection, passing the
    // listening socket: this ping is what starts it, and must be answered by it.
    let pong = ping(&setup.socket);
    assert!(pong.contains("\"type\":\"pong\""), "{pong}");
    let notes = collect(&setup.notify, Duration::from_millis(1500));
    let ready = notes.iter().position(|n| n == "READY=1");
    assert!(ready.is_some(), "no READY=1 in {notes:?}");
    assert!(
        notes.iter().any(|n| n.starts_with("STATUS=")),
        "no STATUS= in {notes:?}"
    );
    let pings = notes.iter().filter(|n| *n == "WATCHDOG=1").count();
    // WATCHDOG_USEC 400 ms: a ping every 200 ms, so 1.5 s holds several.
    assert!(pings >= 4, "only {pings} WATCHDOG=1 in 1.5 s: {notes:?}");
    // Once READY=1 is out, the socket serves.
    assert!(ping(&setup.socket).contains("pong"));
    let status = terminate(&mut child);
    let notes = collect(&setup.notify, Duration::from_millis(300));
    assert!(
        notes.iter().any(|n| n == "STOPPING=1"),
        "no STOPPING=1 in {notes:?}"
    );
    assert!(status.success(), "daemon exit: {status:?}");
}

/// Needs the `test-hooks` feature (its shard-wedging hook); the suite's command enables it.
#[cfg(feature = "test-hooks")]
#[test]
fn a_wedged_shard_stops_the_watchdog_pings() {
    let setup = setup();
    // Shard 1 stops looping 600 ms after start.
    let mut child = activate(&setup, 200_000, Some("1:600"));
    wait_for_socket(&setup.socket);
    assert!(ping(&setup.socket).contains("pong"));
    let early = collect(&setup.notify, Duration::from_millis(400));
    assert!(
        early.iter().any(|n| n == "WATCHDOG=1"),
        "no pings while healthy: {early:?}"
    );
    // Let the hang set in, then listen: no ping may arrive.
    std::thread::sleep(Duration::from_millis(700));
    let _ = collect(&setup.notify, Duration::from_millis(200));
    let late = collect(&setup.notify, Duration::from_millis(1200));
    assert!(
        !late.iter().any(|n| n == "WATCHDOG=1"),
        "WATCHDOG=1 kept coming with a wedged shard: {late:?}"
    );
    // The wedged shard never drains, so SIGTERM cannot finish; kill it.
    let _ = child.kill();
    let _ = child.wait();
}

/// An unprivileged user's locked-memory limit (8 MiB by default) is smaller than a shard's
/// buffer pool (32 MiB): the
/// daemon must still start, say once why it runs without fixed buffers, and serve.
/// As root (whose CAP_IPC_LOCK ignores the limit) the daemon runs as `nobody`.
#[test]
fn a_small_memlock_limit_costs_fixed_buffers_not_the_daemon() {
    let root = running_as_root();
    // nobody must reach the files: a world-traversable scratch dir, owned by nobody, that is
    // also the daemon's root.
    let mut d = Builder::new()
        .for_nobody()
        .prefix("ringcrypt-memlock")
        .root_is_dir()
        .ring(keygen("n"))
        .shards(1)
        .default_fsync()
        .metrics("off")
        .wrap(move |daemon| through_shell(daemon, "ulimit -l 8192 && ", root))
        .prepare();
    chmod(d.dir.path(), 0o777);
    let input = d.root.join("in.bin");
    std::fs::write(&input, vec![7u8; 300_000]).unwrap();
    chmod(&input, 0o644);
    if root {
        chown_r_nobody(d.dir.path());
    }
    d.launch();
    let replies = Client::open(&d.socket, Duration::from_secs(30)).job(&file_req(
        "encrypt",
        &input,
        &d.root.join("in.bin.rcrypt"),
    ));
    let end = replies.last().unwrap();
    assert_eq!(end["type"], "done", "{replies:?}");
    let (status, _) = d.stop(Duration::from_secs(40));
    let text = d.log_text();
    assert!(status.success(), "{status:?}: {text}");
    assert_eq!(
        text.matches("fixed buffers").count(),
        1,
        "one warning, naming the cause: {text}"
    );
    assert!(
        text.contains("LimitMEMLOCK"),
        "the warning says how to fix it: {text}"
    );
}
