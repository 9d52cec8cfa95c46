//! The systemd integration files (README "Running in production") checked with systemd's own tools, and the example
//! configuration checked by the real daemon:
//!
//! - `systemd-analyze verify` accepts both units without a word of complaint (unknown keys
//!   only warn, so any output fails the test);
//! - `systemd-analyze security --offline=true` scores the service at most 1.5;
//! - the units say what the daemon relies on (notify, watchdog, reload, io_uring syscalls,
//!   limits, socket mode and group), and agree with the daemon's defaults;
//! - `systemd-sysusers` and `systemd-tmpfiles` apply the snippets to a scratch root;
//! - `contrib/ringcryptd.toml` documents every daemon setting with its default and runs the
//!   daemon.
//!
//! `systemd-analyze` must be installed; `.ci/run` installs the `systemd` package.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ringcrypt::daemon::{DEFAULT_METRICS, DEFAULT_SOCKET};
use ringcrypt::limits::{CHUNK_LOG2_DEFAULT, DRAIN_TIMEOUT};
use support::{
    DAEMON, START_TIMEOUT, keygen, on_path, output_within, try_ping, wait_within, write_private,
};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The path the shipped service starts the daemon from.
const INSTALLED_DAEMON: &str = "/usr/bin/ringcryptd";
/// Where the shipped service reads its configuration.
const INSTALLED_CONFIG: &str = "/etc/ringcrypt/ringcryptd.toml";
/// The highest `systemd-analyze security` exposure the issue accepts.
const MAX_EXPOSURE: f64 = 1.5;
/// How long any one systemd tool may run.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

fn repo_file(rel: &str) -> PathBuf {
    Path::new(REPO).join(rel)
}

fn read(rel: &str) -> String {
    fs::read_to_string(repo_file(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// A systemd tool from `$PATH`; a missing one fails the test (never a silent skip).
fn tool(name: &str) -> PathBuf {
    on_path(name).unwrap_or_else(|| {
        panic!(
            "{name} is not installed: these tests check the systemd units with systemd's \
             own tools, so .ci/run must install the `systemd` package \
             (apt-get install -y --no-install-recommends systemd)"
        )
    })
}

/// Runs a systemd tool to completion with its output captured (no colours, no pager),
/// killing it after `TOOL_TIMEOUT`.
fn run(cmd: &mut Command) -> Output {
    output_within(
        cmd.env("SYSTEMD_COLORS", "0")
            .env("SYSTEMD_PAGER", "")
            .env("SYSTEMD_LOG_COLOR", "0"),
        TOOL_TIMEOUT,
    )
}

fn show(out: &Output) -> String {
    format!(
        "exit: {}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---- unit files ----------------------------------------------------------------------------

/// A unit file's settings in order: (section, key, value); comments and blank lines dropped.
fn settings(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        assert!(
            !line.ends_with('\\'),
            "line continuations make these checks unreliable: {line}"
        );
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not a key=value line: {line}"));
        out.push((section.clone(), key.trim().into(), value.trim().into()));
    }
    out
}

/// Every value of `key` in `section`.
fn values<'a>(all: &'a [(String, String, String)], section: &str, key: &str) -> Vec<&'a str> {
    all.iter()
        .filter(|(s, k, _)| s == section && k == key)
        .map(|(_, _, v)| v.as_str())
        .collect()
}

/// The one value of `key` in `section`.
fn value<'a>(all: &'a [(String, String, String)], section: &str, key: &str) -> &'a str {
    match values(all, section, key)[..] {
        [one] => one,
        ref other => panic!("want exactly one [{section}] {key}=, found {other:?}"),
    }
}

/// A systemd time span like `20s`, `45s`, `2min` or `500ms`.
fn timespan(text: &str) -> Duration {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .unwrap_or_else(|_| panic!("time span {text:?}"));
    match unit.trim() {
        "" | "s" | "sec" => Duration::from_secs(n),
        "ms" | "msec" => Duration::from_millis(n),
        "min" | "m" => Duration::from_secs(n * 60),
        other => panic!("time span unit {other:?} in {text:?} not understood by this test"),
    }
}

/// A systemd resource limit like `infinity`, `4G` or `67108864`, in bytes.
fn limit_bytes(text: &str) -> u64 {
    if text == "infinity" {
        return u64::MAX;
    }
    let (number, shift) = match text.as_bytes().last() {
        Some(b'K') => (&text[..text.len() - 1], 10),
        Some(b'M') => (&text[..text.len() - 1], 20),
        Some(b'G') => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    number
        .parse::<u64>()
        .unwrap_or_else(|_| panic!("limit {text:?}"))
        << shift
}

/// The system calls in a `systemd-analyze syscall-filter` group, nested groups expanded.
fn syscall_group(analyze: &Path, group: &str) -> BTreeSet<String> {
    let out = run(Command::new(analyze).args(["syscall-filter", group]));
    assert!(
        out.status.success(),
        "syscall-filter {group}: {}",
        show(&out)
    );
    let mut calls = BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
        let name = line.trim();
        if name.is_empty() || name.starts_with('#') {
            continue;
        }
        if name.starts_with('@') {
            calls.extend(syscall_group(analyze, name));
        } else {
            calls.insert(name.to_string());
        }
    }
    assert!(!calls.is_empty(), "systemd knows no group {group}");
    calls
}

/// The system calls the service may make, evaluating its `SystemCallFilter=` lines as
/// systemd does: the first line decides allow list or deny list; later lines add to it (no
/// `~`) or take away from it (`~`), in order.
fn allowed_syscalls(analyze: &Path, service: &[(String, String, String)]) -> BTreeSet<String> {
    let lines = values(service, "Service", "SystemCallFilter");
    assert!(
        lines.first().is_some_and(|l| !l.starts_with('~')),
        "the first SystemCallFilter= must be an allow list: {lines:?}"
    );
    let mut allowed = BTreeSet::new();
    for line in lines {
        let (deny, list) = match line.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        for item in list.split_whitespace() {
            let calls = if item.starts_with('@') {
                syscall_group(analyze, item)
            } else {
                BTreeSet::from([item.to_string()])
            };
            for call in calls {
                if deny {
                    allowed.remove(&call);
                } else {
                    allowed.insert(call);
                }
            }
        }
    }
    allowed
}

/// Both units in a scratch directory, the service pointing at the daemon this build made.
fn units_for_verify() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let service = read("systemd/ringcryptd.service");
    let exec = format!("ExecStart={INSTALLED_DAEMON} ");
    assert_eq!(
        service.matches(&exec).count(),
        1,
        "ExecStart= runs {INSTALLED_DAEMON}"
    );
    let service = service.replace(&exec, &format!("ExecStart={DAEMON} "));
    fs::write(dir.path().join("ringcryptd.service"), service).unwrap();
    fs::copy(
        repo_file("systemd/ringcryptd.socket"),
        dir.path().join("ringcryptd.socket"),
    )
    .unwrap();
    dir
}

#[test]
fn units_verify_without_complaint() {
    let analyze = tool("systemd-analyze");
    let dir = units_for_verify();
    let out = run(Command::new(&analyze)
        .args(["verify", "--man=no"])
        .arg(dir.path().join("ringcryptd.service"))
        .arg(dir.path().join("ringcryptd.socket")));
    // `verify` exits 0 on unknown keys and bad values ("..., ignoring."), so every line it
    // prints counts. Nothing is whitelisted: with ExecStart= on the built binary it is
    // silent (and it does not resolve User=/SocketUser=, so a missing `ringcrypt` user is
    // not reported either).
    let printed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect();
    assert!(
        out.status.success() && printed.is_empty(),
        "systemd-analyze verify complained:\n{}",
        show(&out)
    );
}

#[test]
fn service_exposure_is_at_most_1_5() {
    let analyze = tool("systemd-analyze");
    let out = run(Command::new(&analyze)
        .args(["security", "--offline=true", "--threshold=15", "--no-pager"])
        .arg(repo_file("systemd/ringcryptd.service")));
    assert!(
        out.status.success(),
        "systemd-analyze security: exposure above 1.5:\n{}",
        show(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let marker = "Overall exposure level for ringcryptd.service:";
    let score: f64 = stdout
        .lines()
        .find_map(|l| {
            l.split_once(marker)
                .map(|(_, rest)| rest.trim().to_string())
        })
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure line:\n{}", show(&out)));
    assert!(
        score <= MAX_EXPOSURE,
        "exposure {score} > {MAX_EXPOSURE}:\n{}",
        show(&out)
    );
}

#[test]
fn service_says_what_the_daemon_relies_on() {
    let analyze = tool("systemd-analyze");
    let text = read("systemd/ringcryptd.service");
    let unit = settings(&text);
    let s = |key| value(&unit, "Service", key);

    assert_eq!(s("Type"), "notify");
    assert_eq!(
        s("ExecStart"),
        format!("{INSTALLED_DAEMON} --config {INSTALLED_CONFIG}")
    );
    assert_eq!(s("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(s("User"), "ringcrypt");
    assert_eq!(s("Group"), "ringcrypt");
    assert_eq!(s("UMask"), "0077");
    assert_eq!(s("RuntimeDirectory"), "ringcrypt");
    assert_eq!(s("RuntimeDirectoryMode"), "0750");
    // Removing /run/ringcrypt on stop would take the socket unit's socket file with it.
    assert_eq!(s("RuntimeDirectoryPreserve"), "yes");
    assert_eq!(s("ConfigurationDirectory"), "ringcrypt");
    assert_eq!(s("LimitNOFILE"), "65536");
    assert_eq!(s("CapabilityBoundingSet"), "");
    assert_eq!(s("NoNewPrivileges"), "yes");
    assert_eq!(s("ProtectSystem"), "strict");
    assert_eq!(s("RestrictAddressFamilies"), "AF_UNIX AF_INET AF_INET6");
    assert_eq!(s("IPAddressDeny"), "any");
    assert_eq!(s("IPAddressAllow"), "localhost");

    let watchdog = timespan(s("WatchdogSec"));
    assert!(
        watchdog >= Duration::from_secs(1),
        "WatchdogSec={watchdog:?}"
    );
    let stop = timespan(s("TimeoutStopSec"));
    assert!(
        stop >= DRAIN_TIMEOUT + Duration::from_secs(5),
        "TimeoutStopSec={stop:?} must leave the {DRAIN_TIMEOUT:?} drain time to finish"
    );
    // Each shard pins 16 jobs x 4 buffers x 512 KiB = 32 MiB; 64 MiB a shard, 64 cores.
    let memlock = limit_bytes(s("LimitMEMLOCK"));
    assert!(
        memlock >= 64 * (64 << 20),
        "LimitMEMLOCK={memlock} is too small"
    );

    assert_eq!(value(&unit, "Unit", "Requires"), "ringcryptd.socket");
    assert_eq!(value(&unit, "Unit", "After"), "ringcryptd.socket");
    assert_eq!(value(&unit, "Install", "Also"), "ringcryptd.socket");

    // The example configuration's roots are writable under ProtectSystem=strict.
    let writable: Vec<&str> = values(&unit, "Service", "ReadWritePaths")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .map(|p| p.trim_start_matches(['-', '+']))
        .collect();
    let example: toml::Table = toml::from_str(&read("contrib/ringcryptd.toml")).unwrap();
    for root in example["allow_roots"].as_array().expect("allow_roots list") {
        let root = root.as_str().unwrap();
        assert!(
            writable.contains(&root),
            "allow_roots entry {root} of contrib/ringcryptd.toml is not in ReadWritePaths= \
             ({writable:?})"
        );
    }

    // System calls: io_uring is not part of @system-service (systemd 252), so it must be
    // added; the calls the daemon makes must survive the deny lines.
    for word in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert!(text.contains(word), "{word} is not named in the service");
    }
    let allowed = allowed_syscalls(&analyze, &unit);
    let needed = [
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "sched_setaffinity", // shards pin themselves to cores
        "mlock",
        "mlock2",
        "munlock",
        "openat2", // the sync backend's confined opens
        "linkat",  // O_TMPFILE outputs linked into place
        "fsync",
        "fdatasync",
        "renameat2",
        "eventfd2",
        "accept4",
        "getrandom",
    ];
    let missing: Vec<&str> = needed
        .into_iter()
        .filter(|c| !allowed.contains(*c))
        .collect();
    assert!(missing.is_empty(), "SystemCallFilter= denies {missing:?}");
    for denied in ["setuid", "mount", "reboot", "setrlimit", "init_module"] {
        assert!(
            !allowed.contains(denied),
            "SystemCallFilter= allows {denied}"
        );
    }
}

#[test]
fn socket_says_what_the_daemon_relies_on() {
    let unit = settings(&read("systemd/ringcryptd.socket"));
    let s = |key| value(&unit, "Socket", key);
    assert_eq!(s("ListenStream"), DEFAULT_SOCKET);
    assert_eq!(s("SocketMode"), "0660");
    assert_eq!(s("SocketUser"), "ringcrypt");
    assert_eq!(s("SocketGroup"), "ringcrypt");
    assert_eq!(s("DirectoryMode"), "0750");
    assert_eq!(value(&unit, "Install", "WantedBy"), "sockets.target");
}

#[test]
fn sysusers_and_tmpfiles_apply_to_a_scratch_root() {
    let sysusers = tool("systemd-sysusers");
    let tmpfiles = tool("systemd-tmpfiles");
    let root = tempfile::tempdir().unwrap();
    fs::create_dir(root.path().join("etc")).unwrap();

    let out = run(Command::new(&sysusers)
        .arg(format!("--root={}", root.path().display()))
        .arg(repo_file("systemd/ringcrypt.sysusers.conf")));
    assert!(out.status.success(), "systemd-sysusers:\n{}", show(&out));
    let passwd = fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let user: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with("ringcrypt:"))
        .unwrap_or_else(|| panic!("no ringcrypt user:\n{passwd}"))
        .split(':')
        .collect();
    let (uid, gid): (u32, u32) = (user[2].parse().unwrap(), user[3].parse().unwrap());
    assert!(uid > 0 && uid < 1000, "not a system user: {user:?}");
    assert!(
        user[6].ends_with("nologin"),
        "the user can log in: {user:?}"
    );
    let group = fs::read_to_string(root.path().join("etc/group")).unwrap();
    assert!(
        group
            .lines()
            .any(|l| l.starts_with(&format!("ringcrypt:x:{gid}:"))),
        "no ringcrypt group with gid {gid}:\n{group}"
    );

    let out = run(Command::new(&tmpfiles)
        .arg(format!("--root={}", root.path().display()))
        .arg("--create")
        .arg(repo_file("systemd/ringcrypt.tmpfiles.conf")));
    let as_root = rustix::process::geteuid().is_root();
    if as_root {
        assert!(out.status.success(), "systemd-tmpfiles:\n{}", show(&out));
    } else {
        // Only root may give the directories away; everything else must have worked.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let other: Vec<&str> = stderr
            .lines()
            .filter(|l| {
                !(l.starts_with("fchownat() of ") && l.ends_with("Operation not permitted"))
            })
            .collect();
        assert!(other.is_empty(), "systemd-tmpfiles:\n{}", show(&out));
    }
    for (dir, mode, owner) in [
        ("run/ringcrypt", 0o750, (uid, gid)),
        ("etc/ringcrypt", 0o750, (0, gid)),
    ] {
        let meta = fs::metadata(root.path().join(dir)).unwrap_or_else(|e| panic!("{dir}: {e}"));
        assert!(meta.is_dir());
        assert_eq!(meta.mode() & 0o7777, mode, "mode of /{dir}");
        if as_root {
            assert_eq!((meta.uid(), meta.gid()), owner, "owner of /{dir}");
        }
    }
}

// ---- the example configuration --------------------------------------------------------------

/// The daemon's settings, from its `--help`: every long flag but `--config`, `--dev`,
/// `--completions`, `--help` and `--version`, under its configuration-file name.
fn daemon_settings() -> Vec<String> {
    let out = run(Command::new(DAEMON).arg("--help"));
    assert!(out.status.success(), "ringcryptd --help:\n{}", show(&out));
    let mut names = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // A flag's own line is indented at most six columns; its description (which may
        // wrap so that a line starts with another flag's name) is indented further.
        let indent = line.len() - line.trim_start().len();
        let Some(flag) = line.trim_start().strip_prefix("--").filter(|_| indent <= 6) else {
            continue;
        };
        let flag = flag.split_whitespace().next().unwrap();
        match flag {
            // Not settings: ways to run the daemon.
            "config" | "dev" | "completions" | "help" | "version" | "check-config" => {}
            // Repeatable flags are lists in the file, named in the plural.
            "allow-root" => names.push("allow_roots".to_string()),
            "allow-uid" => names.push("allow_uids".to_string()),
            "allow-gid" => names.push("allow_gids".to_string()),
            other => names.push(other.replace('-', "_")),
        }
    }
    assert!(
        names.contains(&"keys".to_string()),
        "--help lists no --keys: {names:?}"
    );
    names
}

/// The settings of the example as the daemon would read them with every commented-out
/// `# name = value` line of a known setting switched on: each such line documents a default.
fn example_with_defaults(settings: &[String]) -> String {
    let mut out = String::new();
    for line in read("contrib/ringcryptd.toml").lines() {
        let uncommented = line.strip_prefix("# ").filter(|rest| {
            settings
                .iter()
                .any(|name| rest.starts_with(&format!("{name} = ")))
        });
        out.push_str(uncommented.unwrap_or(line));
        out.push('\n');
    }
    out
}

#[test]
fn example_config_documents_every_setting_with_its_default() {
    let settings = daemon_settings();
    let table: toml::Table = toml::from_str(&example_with_defaults(&settings))
        .unwrap_or_else(|e| panic!("contrib/ringcryptd.toml with its defaults switched on: {e}"));
    for name in &settings {
        assert!(
            table.contains_key(name),
            "contrib/ringcryptd.toml does not document `{name}` (as `{name} = ...` or \
             `# {name} = ...`)"
        );
    }
    let extra: Vec<&String> = table.keys().filter(|k| !settings.contains(k)).collect();
    assert!(
        extra.is_empty(),
        "settings the daemon does not have: {extra:?}"
    );
    assert_eq!(table["socket"].as_str(), Some(DEFAULT_SOCKET));
    assert_eq!(table["fsync"].as_str(), Some("always"));
    assert_eq!(
        table["chunk_log2"].as_integer(),
        Some(i64::from(CHUNK_LOG2_DEFAULT))
    );
    assert_eq!(table["metrics"].as_str(), Some(DEFAULT_METRICS));
    let keys = table["keys"].as_str().unwrap();
    assert!(
        keys.starts_with("/etc/ringcrypt/"),
        "keys = {keys}: the service can read only its ConfigurationDirectory under /etc"
    );
}

#[test]
fn example_config_runs_the_daemon() {
    let settings = daemon_settings();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    let keys = dir.path().join("keys.toml");
    let socket = dir.path().join("d.sock");
    let log = dir.path().join("d.log");
    write_private(&keys, &keygen("systemd-test"));

    // The example with its defaults switched on and the host-specific paths moved here; the
    // metrics port is off so parallel tests cannot collide on it.
    let replace = |name: &str| -> Option<String> {
        Some(match name {
            "socket" => format!("socket = {:?}", socket.display().to_string()),
            "keys" => format!("keys = {:?}", keys.display().to_string()),
            "allow_roots" => format!("allow_roots = [{:?}]", root.display().to_string()),
            "metrics" => "metrics = \"off\"".to_string(),
            "shards" => "shards = 2".to_string(),
            _ => return None,
        })
    };
    let mut config = String::new();
    let mut replaced = BTreeSet::new();
    for line in example_with_defaults(&settings).lines() {
        let name = line.split_once(" = ").map(|(k, _)| k.trim()).unwrap_or("");
        match replace(name) {
            Some(new) if !line.starts_with('#') => {
                replaced.insert(name.to_string());
                config.push_str(&new);
            }
            _ => config.push_str(line),
        }
        config.push('\n');
    }
    assert_eq!(
        replaced,
        BTreeSet::from(["allow_roots", "keys", "metrics", "shards", "socket"].map(String::from)),
        "the test could not point every host path of the example at its temp dir:\n{config}"
    );
    let config_path = dir.path().join("ringcryptd.toml");
    fs::write(&config_path, &config).unwrap();

    let mut child = Command::new(DAEMON)
        .arg("--config")
        .arg(&config_path)
        .env_remove("RINGCRYPT_SOCKET")
        .env_remove("RINGCRYPT_KEYS")
        .env_remove("RINGCRYPT_BACKEND")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("WATCHDOG_USEC")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .expect("ringcryptd starts");
    let log_text = || fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + START_TIMEOUT;
    let pong = loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "ringcryptd --config (the example) exited with {status}; log:\n{}\nconfig:\n{config}",
                log_text()
            );
        }
        if let Some(reply) = try_ping(&socket) {
            break reply;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "no answer to ping within {START_TIMEOUT:?}; log:\n{}",
                log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if pong["type"] != "pong" || pong["shards"] != 2 {
        // Not left running when the test fails.
        let _ = child.kill();
        let _ = child.wait();
        panic!("want a pong from 2 shards: {pong}");
    }

    let kill = run(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    assert!(kill.status.success(), "kill -TERM:\n{}", show(&kill));
    let Some(status) = wait_within(&mut child, DRAIN_TIMEOUT + Duration::from_secs(10)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("ringcryptd ignored SIGTERM; log:\n{}", log_text());
    };
    assert!(
        status.success(),
        "ringcryptd exited with {status} after SIGTERM; log:\n{}",
        log_text()
    );
}
