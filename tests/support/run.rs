//! Commands run to completion: the `ringcrypt` binary as a [`Run`] (README "Using it": exit 0
//! success, 1 the job failed with `error: ... [code]` on stderr, 2 usage error, 3 the daemon
//! could not be reached), `ringcrypt keygen`, and any command with a time bound.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use super::CLI;

/// What one run of the `ringcrypt` binary did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The run's exit code and output (not UTF-8: shown lossily). A run killed by a signal
    /// fails the test.
    pub fn of(out: Output) -> Run {
        Run {
            code: out
                .status
                .code()
                .expect("ringcrypt exited, not killed by a signal"),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// As [`Run::of`], and stdout and stderr must be UTF-8; a run killed by a signal has
    /// code -1.
    pub fn of_utf8(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8(out.stdout).expect("UTF-8 stdout"),
            stderr: String::from_utf8(out.stderr).expect("UTF-8 stderr"),
        }
    }

    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "expected success: {self:#?}");
        self
    }

    /// Exit 1 with `[code]` on the `error:` line.
    #[track_caller]
    pub fn failed(self, code: &str) -> Run {
        assert_eq!(self.code, 1, "expected exit 1 [{code}]: {self:#?}");
        assert!(
            self.stderr.contains("error: ") && self.stderr.contains(&format!("[{code}]")),
            "expected `error: ... [{code}]` on stderr: {self:#?}"
        );
        self
    }

    /// Exit 1 with `[code]` somewhere on stderr.
    #[track_caller]
    pub fn failed_code(self, code: &str) -> Run {
        assert_eq!(self.code, 1, "expected a failed job (exit 1): {self:#?}");
        assert!(
            self.stderr.contains(&format!("[{code}]")),
            "expected [{code}] on stderr: {self:#?}"
        );
        self
    }

    #[track_caller]
    pub fn usage(self) -> Run {
        assert_eq!(self.code, 2, "expected a usage error (exit 2): {self:#?}");
        self
    }
}

/// `ringcrypt` with no key ring or socket inherited from the environment.
pub fn ringcrypt_command() -> Command {
    let mut cmd = Command::new(CLI);
    cmd.env_remove("RINGCRYPT_KEYS")
        .env_remove("RINGCRYPT_SOCKET");
    cmd
}

/// Runs `cmd` with `stdin` fed to it from a thread (so a full stdout pipe cannot deadlock the
/// test), its stdout and stderr captured; its raw output.
pub fn output_fed(cmd: &mut Command, stdin: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command starts");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().expect("the command runs");
    feeder.join().unwrap();
    out
}

/// Runs `ringcrypt ARGS` with no key ring or socket inherited from the environment.
pub fn ringcrypt(args: &[&str]) -> Run {
    Run::of(
        ringcrypt_command()
            .args(args)
            .output()
            .expect("the ringcrypt binary runs"),
    )
}

/// Runs `ringcrypt --socket SOCKET ARGS` with `cwd` as its working directory and no key ring
/// or socket inherited from the environment.
pub fn ringcrypt_in(cwd: &Path, socket: &Path, args: &[&str]) -> Run {
    Run::of(
        ringcrypt_command()
            .arg("--socket")
            .arg(socket)
            .args(args)
            .current_dir(cwd)
            .output()
            .expect("the ringcrypt binary runs"),
    )
}

/// One `[[key]]` entry from `ringcrypt keygen --name NAME`.
pub fn keygen(name: &str) -> String {
    let out = ringcrypt_command()
        .args(["keygen", "--name", name])
        .output()
        .expect("ringcrypt keygen runs");
    assert!(out.status.success(), "ringcrypt keygen failed: {out:?}");
    String::from_utf8(out.stdout).expect("keygen prints UTF-8")
}

/// Polls `child` until it exits or `within` passes.
pub fn wait_within(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command with piped stdout/stderr to completion, killing it (by its own pid) after
/// `within`, which fails the test.
pub fn output_within(cmd: &mut Command, within: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?} does not start: {e}"));
    // Drain both pipes while waiting, so a chatty command cannot block on a full pipe.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let status = wait_within(&mut child, within);
    if status.is_none() {
        let _ = child.kill();
    }
    let out = Output {
        status: child.wait().expect("wait"),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    if status.is_none() {
        panic!("command {cmd:?} did not finish within {within:?}; output so far: {out:?}");
    }
    out
}

/// SIGTERM to `child`, then up to `within` for it to exit: its exit status, or None once it
/// has been killed with SIGKILL.
pub fn sigterm_within(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let _ = kill("TERM", child.id());
    let status = wait_within(child, within);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    status
}

/// `name` on `$PATH`, an executable file.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// `kill -NAME PID` (`TERM`, `HUP`, `KILL`, ...); whether `kill` succeeded.
pub fn kill(name: &str, pid: u32) -> bool {
    Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}
