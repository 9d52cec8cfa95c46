//! The figures and examples README.md prints, checked against what the real binaries and
//! tools print, so that they cannot drift again:
//!
//! - the `systemd-analyze security` exposure score that README.md and the service unit's
//!   comment state is the one `systemd-analyze security --offline=yes` gives the unit;
//! - the README's `socat` ping example, run as printed against `ringcryptd --dev`, prints the
//!   reply the README shows, and every `pong` line in README.md and docs/protocol.md is the
//!   real daemon's reply;
//! - the start-up line the README shows under socket activation is the one the daemon logs
//!   when `systemd-socket-activate` hands it a socket (naming that socket, not the default).
//!
//! socat and the systemd tools must be installed; `.ci/run` installs them.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// How long a tool may run.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

fn read(rel: &str) -> String {
    fs::read_to_string(Path::new(REPO).join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

fn tool(name: &str) -> PathBuf {
    on_path(name).unwrap_or_else(|| {
        panic!("{name} is not installed: .ci/run installs it (socat, systemd packages)")
    })
}

/// The word after `marker` in `text`, as a number; `what` names it in a failure.
fn figure_after(text: &str, marker: &str, what: &str) -> f64 {
    let (_, rest) = text
        .split_once(marker)
        .unwrap_or_else(|| panic!("{what} no longer says {marker:?}"));
    let word = rest.split_whitespace().next().unwrap_or("");
    word.trim_end_matches([',', '.', ';', ')'])
        .parse()
        .unwrap_or_else(|e| panic!("{what}: {marker:?} is followed by {word:?}, not a figure: {e}"))
}

#[test]
fn exposure_score_is_the_one_systemd_analyze_gives() {
    let out = output_within(
        Command::new(tool("systemd-analyze"))
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(Path::new(REPO).join("systemd/ringcryptd.service"))
            .env("SYSTEMD_COLORS", "0")
            .env("SYSTEMD_PAGER", ""),
        TOOL_TIMEOUT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let real = figure_after(
        &stdout,
        "Overall exposure level for ringcryptd.service:",
        "systemd-analyze security",
    );
    let readme = figure_after(&read("README.md"), "scores the unit", "README.md");
    let unit = figure_after(
        &read("systemd/ringcryptd.service"),
        "scores this",
        "systemd/ringcryptd.service",
    );
    assert_eq!(
        readme, real,
        "README.md states exposure {readme}; systemd-analyze says {real}"
    );
    assert_eq!(
        unit, real,
        "the unit's comment states exposure {unit}; systemd-analyze says {real}"
    );
}

/// Waits until `socket` answers a ping; fails with the daemon's log if it exits first.
fn wait_for_ping(child: &mut Child, socket: &Path, log: &Path) -> Value {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "ringcryptd exited with {status}; log:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        if let Some(pong) = try_ping(socket) {
            return pong;
        }
        assert!(
            Instant::now() < deadline,
            "no answer within {START_TIMEOUT:?}; log:\n{}",
            fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A daemon the test started, killed when the test ends, passing or not: a panic between
/// start and `stop` (a missing tool, a failed assertion) must not leave it running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn stop(child: &mut Child) {
    let status = sigterm_within(child, STOP_TIMEOUT).expect("ringcryptd stops on SIGTERM");
    assert!(status.success(), "ringcryptd exited with {status}");
}

/// Every JSON `pong` line quoted in `text`, as the objects they show.
fn pong_examples(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| l.find(r#"{"type":"pong""#).map(|at| &l[at..]))
        .map(|json| {
            serde_json::from_str(json.trim())
                .unwrap_or_else(|e| panic!("a pong example is not JSON ({e}): {json}"))
        })
        .collect()
}

#[test]
fn ping_examples_are_what_the_daemon_answers() {
    let readme = read("README.md");
    let prompt = "$ echo '{\"op\":\"ping\"}' | socat - UNIX-CONNECT:ringcrypt-dev/ringcrypt.sock";
    let mut lines = readme.lines().skip_while(|l| l.trim() != prompt);
    assert!(
        lines.next().is_some(),
        "README.md no longer shows the `socat` ping example:\n  {prompt}"
    );
    let shown: Value = serde_json::from_str(lines.next().unwrap_or("").trim())
        .expect("the line after the README's ping example is its JSON reply");

    // `ringcryptd --dev` in a scratch directory, as the README's quick start runs it, on the
    // default backend; two shards as the examples show.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("d.log");
    let mut child = Running(
        Command::new(DAEMON)
            .args(["--dev", "--shards", "2", "--metrics", "off"])
            .current_dir(dir.path())
            .env_remove("RINGCRYPT_SOCKET")
            .env_remove("RINGCRYPT_BACKEND")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let socket = dir.path().join("ringcrypt-dev/ringcrypt.sock");
    wait_for_ping(&mut child.0, &socket, &log);

    // The README's command, run as printed, from the directory the daemon started in.
    tool("socat");
    let command = prompt.trim_start_matches("$ ");
    let out = output_within(
        Command::new("sh")
            .args(["-c", command])
            .current_dir(dir.path()),
        TOOL_TIMEOUT,
    );
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{command}: {out:?}");
    let real: Value = serde_json::from_str(printed.trim())
        .unwrap_or_else(|e| panic!("{command} printed {printed:?}: {e}"));
    assert_eq!(
        shown, real,
        "README.md shows the ping reply {shown}; the daemon answers {real}"
    );

    // Every other pong example, with its id if it has one.
    let mut examples = pong_examples(&readme);
    examples.extend(pong_examples(&read("docs/protocol.md")));
    assert!(examples.len() >= 3, "pong examples found: {examples:?}");
    let mut client = Client::connect(&socket);
    for example in examples {
        let mut request = serde_json::json!({"op": "ping"});
        if let Some(id) = example.get("id") {
            request["id"] = id.clone();
        }
        let reply = client.call(&request);
        assert_eq!(
            example, reply,
            "a documented pong differs from the daemon's"
        );
    }
    drop(client);
    stop(&mut child.0);
}

#[test]
fn startup_line_under_socket_activation_is_the_readmes() {
    let readme = read("README.md");
    let documented = readme
        .lines()
        .map(str::trim)
        .find(|l| l.contains("listening on") && l.contains("(passed by systemd)"))
        .expect("README.md shows the start-up line under socket activation");
    let default_socket = "/run/ringcrypt/ringcrypt.sock";
    let example_root = "/srv/ringcrypt";
    assert!(
        documented.contains(default_socket) && documented.contains(example_root),
        "the README's start-up line names the packaged socket and root: {documented}"
    );

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    let keys = dir.path().join("keys.toml");
    write_private(&keys, &keygen("readme"));
    // systemd hands over a socket elsewhere than the daemon's default (no --socket, no
    // $RINGCRYPT_SOCKET): the log must name the one handed over.
    let handed = dir.path().join("handed.sock");
    let log = dir.path().join("d.log");
    let mut child = Command::new(tool("systemd-socket-activate"))
        .arg("-l")
        .arg(&handed)
        .arg(DAEMON)
        .arg("--keys")
        .arg(&keys)
        .arg("--allow-root")
        .arg(&root)
        .args(["--shards", "2", "--metrics", "off", "--fsync", "always"])
        .env_remove("RINGCRYPT_SOCKET")
        .env_remove("RINGCRYPT_BACKEND")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // The socket appears once systemd-socket-activate listens; the first connection starts
    // the daemon.
    let pong = wait_for_ping(&mut child, &handed, &log);
    assert_eq!(pong["type"], "pong", "{pong}");
    stop(&mut child);
    let text = fs::read_to_string(&log).unwrap();
    let want = documented
        .replace(default_socket, &handed.display().to_string())
        .replace(example_root, &root.display().to_string());
    // A line of the log holds the README's whole line (a log prefix, such as a priority or a
    // time stamp, may stand before it).
    assert!(
        text.lines().any(|l| l.contains(&want)),
        "the daemon's start-up line is not the README's.\nwant: {want}\nlog:\n{text}"
    );
    assert!(
        !text.contains(default_socket),
        "the log names {default_socket}, which it was not handed:\n{text}"
    );
}
