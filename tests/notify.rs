//! systemd integration without systemd: the real `ringcryptd` under the real
//! `systemd-socket-activate` (socket activation), with a test `NOTIFY_SOCKET` listener and
//! `WATCHDOG_USEC`.
//!
//! Checked: `READY=1` arrives, and once it has, the inherited socket answers `ping`;
//! `WATCHDOG=1` keeps arriving while the shards loop and stops when one is wedged (a
//! debug-build hook); `STATUS=` lines arrive; `STOPPING=1` arrives on SIGTERM and the daemon
//! exits 0.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DAEMON: &str = env!("CARGO_BIN_EXE_ringcryptd");
const CLIENT: &str = env!("CARGO_BIN_EXE_ringcrypt");

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
    let entry = Command::new(CLIENT)
        .args(["keygen", "--name", "n"])
        .output()
        .unwrap();
    assert!(entry.status.success());
    std::fs::write(&keys, &entry.stdout).unwrap();
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();
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
    let tool = which("systemd-socket-activate").unwrap_or_else(|| {
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

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.exists())
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
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let end = Instant::now() + Duration::from_secs(40);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("the daemon did not exit within 40 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
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
    let setup = setup();
    let root = running_as_root();
    // nobody must reach the files: a world-traversable scratch dir owned by nobody.
    let work = tempfile::Builder::new()
        .prefix("ringcrypt-memlock")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let keys = work.path().join("keys.toml");
    std::fs::copy(&setup.keys, &keys).unwrap();
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();
    let input = work.path().join("in.bin");
    std::fs::write(&input, vec![7u8; 300_000]).unwrap();
    std::fs::set_permissions(&input, std::fs::Permissions::from_mode(0o644)).unwrap();
    let socket = work.path().join("s.sock");
    let script = format!(
        "ulimit -l 8192 && exec {DAEMON} --socket {} --keys {} --allow-root {} --shards 1 --metrics off",
        socket.display(),
        keys.display(),
        work.path().display()
    );
    let mut cmd = if root {
        let ok = Command::new("chown")
            .args(["-R", "nobody"])
            .arg(work.path())
            .status()
            .unwrap();
        assert!(ok.success());
        // setpriv execs in place (no session wrapper), so the child's pid is the daemon's.
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--",
            "sh",
            "-c",
            &script,
        ]);
        cmd
    } else {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &script]);
        cmd
    };
    let log = work.path().join("d.log");
    let mut child = cmd
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&socket).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the daemon exited ({status:?}): {}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        assert!(
            Instant::now() < end,
            "no socket: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut stream = UnixStream::connect(&socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let request = format!(
        "{{\"op\":\"encrypt\",\"input\":\"{}\",\"output\":\"{}\"}}\n",
        input.display(),
        work.path().join("in.bin.rcrypt").display()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let mut lines = String::new();
    while !lines.contains("\"done\"") && !lines.contains("\"error\"") {
        assert!(
            reader.read_line(&mut lines).unwrap() > 0,
            "connection closed: {lines}"
        );
    }
    assert!(lines.contains("\"done\""), "{lines}");
    let status = terminate(&mut child);
    let text = std::fs::read_to_string(&log).unwrap();
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

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        .unwrap_or(false)
}
