//! Acting as `nobody` (uid 65534), which needs root: a small Python client under `setpriv`
//! for raw requests ([`NOBODY_CLIENT`]; never the `ringcrypt` client, which would pass
//! descriptors), the `ringcrypt` client itself ([`ringcrypt_as_nobody`]) and a shell
//! ([`shell_as_nobody`], to run a daemon as nobody).

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{CLI, Daemon, brief, chmod, output_within, p, parse_line, with};

/// `nobody` on Debian-like systems; the daemons that serve it get `--allow-uid 65534`.
pub const NOBODY: u32 = 65534;
pub const NOBODY_ARG: &str = "65534";

/// The system Python, which `nobody` can run (a per-user interpreter may sit in /root).
pub const PYTHON: &str = "/usr/bin/python3";

/// Whether this process's effective uid is 0.
pub fn running_as_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        .unwrap_or(false)
}

/// The uid (`id -u NAME`) of a user.
pub fn uid_of(name: &str) -> u32 {
    id(name, "-u")
}

/// The gid (`id -g NAME`) of a user's group.
pub fn gid_of(name: &str) -> u32 {
    id(name, "-g")
}

fn id(name: &str, which: &str) -> u32 {
    let out = Command::new("id").args([which, name]).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

pub fn chown_nobody(path: &Path) {
    std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
}

/// `chown -R nobody PATH`.
pub fn chown_r_nobody(path: &Path) {
    let status = Command::new("chown")
        .args(["-R", "nobody"])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// `setpriv` to nobody and nogroup with no supplementary groups, then `program`.
fn setpriv_nobody(program: &str) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        "--",
        program,
    ]);
    cmd
}

/// `sh -c SCRIPT`, as nobody when `as_nobody` (setpriv execs in place, with no session
/// wrapper, so the child's pid is the script's, and after `exec` the daemon's).
pub fn shell_as_nobody(script: &str, as_nobody: bool) -> Command {
    let mut cmd = if as_nobody {
        setpriv_nobody("sh")
    } else {
        Command::new("sh")
    };
    cmd.args(["-c", script]);
    cmd
}

/// `cmd` (a program, its arguments and environment) run as `sh -c 'PREFIX exec PROGRAM
/// ARGS...'`, as nobody when `as_nobody`: a daemon with a shell's `ulimit` first, say, or
/// under another uid. For [`super::Builder::wrap`].
pub fn through_shell(cmd: &Command, prefix: &str, as_nobody: bool) -> Command {
    let quote = |arg: &std::ffi::OsStr| {
        let arg = arg.to_str().expect("a UTF-8 argument");
        assert!(!arg.contains('\''), "an argument with a quote: {arg}");
        format!("'{arg}'")
    };
    let mut script = format!("{prefix}exec {}", quote(cmd.get_program()));
    for arg in cmd.get_args() {
        script.push(' ');
        script.push_str(&quote(arg));
    }
    let mut shell = shell_as_nobody(&script, as_nobody);
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => shell.env(key, value),
            None => shell.env_remove(key),
        };
    }
    shell
}

/// The `ringcrypt` client as nobody: `ringcrypt --socket SOCKET ARGS`.
pub fn ringcrypt_as_nobody(socket: &Path, args: &[&str]) -> Output {
    setpriv_nobody(CLI)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("RINGCRYPT_KEYS")
        .output()
        .unwrap()
}

/// A client run as `nobody`. `end SOCK SECS REQ...` sends the requests in one write and prints
/// each reply line until every request has a final reply (`#END`); `eof SOCK SECS REQ...`
/// prints reply lines until the daemon closes the connection (`#EOF seconds`); either prints
/// `#TIMEOUT` when SECS pass first. `hold SOCK N ping|silent` opens N connections (sending a
/// ping on each, or nothing), prints a JSON summary of what came back and `#READY`, then
/// keeps them open until stdin closes or it is killed. It never half-closes a connection, so
/// an EOF is the daemon's doing.
pub const NOBODY_CLIENT: &str = r##"
import json, signal, socket, sys, time
signal.alarm(170)
def out(text):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
mode, path = sys.argv[1], sys.argv[2]
if mode in ("end", "eof"):
    limit = float(sys.argv[3])
    requests = sys.argv[4:]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(limit)
    s.connect(path)
    s.sendall("".join(r + "\n" for r in requests).encode())
    start = time.monotonic()
    buf = b""
    finals = 0
    while True:
        if mode == "end" and finals >= len(requests):
            out("#END")
            break
        left = start + limit - time.monotonic()
        if left <= 0:
            out("#TIMEOUT")
            break
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            out("#TIMEOUT")
            break
        except OSError as e:
            out("#RESET %s" % e)
            break
        if not chunk:
            out("#EOF %.3f" % (time.monotonic() - start))
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            out(line.decode())
            if json.loads(line).get("type") not in ("accepted", "progress", "file"):
                finals += 1
elif mode == "hold":
    count, ping = int(sys.argv[3]), sys.argv[4] == "ping"
    res = dict(opened=0, connect_failed=0, pong=0, busy=0, closed=0, silent=0, other=0)
    socks = []
    for _ in range(count):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
        except OSError:
            res["connect_failed"] += 1
            s.close()
            continue
        res["opened"] += 1
        socks.append(s)
        if ping:
            try:
                s.sendall(b'{"op":"ping"}\n')
            except OSError:
                pass
    time.sleep(0.5)
    deadline = time.monotonic() + 20
    for s in socks:
        if ping:
            s.settimeout(max(0.01, deadline - time.monotonic()))
        else:
            s.setblocking(False)
        try:
            data = s.recv(65536)
        except (BlockingIOError, socket.timeout):
            res["silent"] += 1
            continue
        except OSError:
            res["closed"] += 1
            continue
        if not data:
            res["closed"] += 1
        elif b'"busy"' in data:
            res["busy"] += 1
        elif b'"pong"' in data:
            res["pong"] += 1
        else:
            res["other"] += 1
    out(json.dumps(res))
    out("#READY")
    sys.stdin.read()
"##;

pub fn nobody_command(args: &[&str]) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid",
        NOBODY_ARG,
        "--regid",
        NOBODY_ARG,
        "--clear-groups",
        "--",
        PYTHON,
        "-I",
        "-c",
        NOBODY_CLIENT,
    ])
    .args(args)
    .current_dir("/");
    cmd
}

/// What the `nobody` client saw: the reply lines, parsed, and how it stopped (`#END`,
/// `#EOF s`, `#TIMEOUT`, `#RESET ...`).
pub struct Session {
    pub replies: Vec<Value>,
    pub end: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\n{}", brief(&self.replies), self.end)
    }
}

impl Session {
    pub fn by_id(&self, id: &str) -> Vec<&Value> {
        self.replies.iter().filter(|r| r["id"] == id).collect()
    }

    pub fn final_of(&self, id: &str) -> &Value {
        self.by_id(id)
            .into_iter()
            .find(|r| !matches!(r["type"].as_str(), Some("accepted" | "progress" | "file")))
            .unwrap_or_else(|| panic!("no final reply for {id} as nobody: {self:?}"))
    }
}

pub fn nobody_session(socket: &Path, mode: &str, secs: u64, requests: &[Value]) -> Session {
    let texts: Vec<String> = requests.iter().map(|r| r.to_string()).collect();
    let secs_text = secs.to_string();
    let mut args = vec![mode, p(socket), &secs_text];
    args.extend(texts.iter().map(String::as_str));
    let out = output_within(&mut nobody_command(&args), Duration::from_secs(secs + 30));
    assert!(out.status.success(), "the client as nobody failed: {out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut replies = Vec::new();
    let mut end = String::new();
    for line in stdout.lines() {
        if line.starts_with('#') {
            end = line.to_string();
        } else {
            replies.push(parse_line(line));
        }
    }
    Session { replies, end }
}

/// The `hold` client, killed (by its pid) when dropped.
pub struct Holder {
    pub child: Child,
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn nobody_hold(socket: &Path, count: usize, ping: bool) -> (Holder, Value) {
    let count_text = count.to_string();
    let mut child = nobody_command(&[
        "hold",
        p(socket),
        &count_text,
        if ping { "ping" } else { "silent" },
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit())
    .spawn()
    .expect("setpriv python3 starts");
    let stdout = child.stdout.take().unwrap();
    let holder = Holder { child };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line == "#READY" => break,
            Ok(line) => last = Some(line),
            Err(_) => panic!(
                "nobody's {count} connections were not all open and checked within 90 s \
                 (last output: {last:?})"
            ),
        }
    }
    let summary: Value =
        serde_json::from_str(&last.expect("a summary before #READY")).expect("JSON summary");
    (holder, summary)
}

/// The daemon's root laid out for `nobody`: `pub/` owned by nobody (0755) with `in.txt`
/// (nobody's, 0644), for tests where the daemon serves uid 65534.
pub fn nobody_pub(rd: &Daemon, content: &[u8]) -> (PathBuf, PathBuf) {
    let public = rd.root.join("pub");
    fs::create_dir(&public).unwrap();
    chmod(&public, 0o755);
    chown_nobody(&public);
    let input = public.join("in.txt");
    fs::write(&input, content).unwrap();
    chmod(&input, 0o644);
    chown_nobody(&input);
    (public, input)
}

/// One raw request as nobody; returns its final reply.
pub fn as_nobody(rd: &Daemon, request: Value) -> Value {
    let session = nobody_session(&rd.socket, "end", 60, &[with(request, json!({"id": "n"}))]);
    assert_eq!(session.end, "#END", "{session:?}");
    session.final_of("n").clone()
}
