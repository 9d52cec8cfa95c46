//! `ringcryptd` setup and lifecycle: read the configuration, load the key ring, open the
//! allowed roots, bind the socket, start one pinned shard per core, then wait for signals:
//! SIGHUP reloads the key ring into every shard; SIGTERM (or SIGINT) drains and exits 0.
//!
//! What this room does not do: serve requests (shards do).

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub(crate) mod batch_files;
pub mod check;
pub mod creds;
pub mod held_dirs;
pub(crate) mod job;
pub mod logging;
pub(crate) mod metrics;
pub(crate) mod notify;
pub(crate) mod reactor;
pub(crate) mod roots;
pub(crate) mod shard;
pub mod socket;
pub(crate) mod token;
pub(crate) mod tree_job;

use clap::{Parser, ValueEnum};
use serde::Deserialize;

use crate::crypto::keys::{self, KeyRing};
use crate::daemon::job::{BUFFERS_PER_JOB, IoMode, direct_buf_bytes, pool_buf_bytes};
use crate::durable::Durability;
use crate::error::{Code, Error};
use crate::limits::{
    CHUNK_LOG2_DEFAULT, CHUNK_LOG2_MIN, DRAIN_TIMEOUT, RANGE_JOBS_RESERVED_PER_SHARD,
    RUNNING_JOBS_PER_SHARD, SHUTDOWN_GRACE, SHUTDOWN_JOIN_SLACK, SPLIT_MIN_BYTES,
};

use crate::daemon::reactor::{BackendKind, Reactor};
use crate::daemon::roots::Roots;
use crate::daemon::shard::{Callers, Msg, Shard, Shared};
use logging::{LogFormat, LogLevel};
use notify::Notifier;
use socket::SocketAccess;

/// Where the socket lives unless told otherwise (README "Using it").
pub const DEFAULT_SOCKET: &str = "/run/ringcrypt/ringcrypt.sock";

/// The largest chunk the daemon's pool buffers hold: 64 KiB, the format's default. Larger
/// chunks would multiply every shard's pinned buffer memory; files sealed offline with larger
/// chunks are decrypted offline.
pub const DAEMON_CHUNK_LOG2_MAX: u8 = 16;

const AFTER_HELP: &str = "\
Examples:
  ringcryptd --dev                                   # try it: everything under ./ringcrypt-dev
  ringcryptd --socket /run/ringcrypt/ringcrypt.sock --keys /etc/ringcrypt/keys.toml \\
             --allow-root /srv/data --allow-root /backup
  ringcryptd --config /etc/ringcrypt/ringcryptd.toml
  ringcryptd --config /etc/ringcrypt/ringcryptd.toml --check-config   # validate, start nothing
  ringcryptd --dev --log-format json --log-level warn   # only refusals and failures, in JSON
  ringcryptd --dev --io buffered   # file data through the page cache, half the buffer memory

Then, from a shell:
  echo '{\"op\":\"ping\"}' | socat - UNIX-CONNECT:/run/ringcrypt/ringcrypt.sock
  ringcrypt encrypt /srv/data/report.pdf

Signals: SIGHUP reloads the key ring; SIGTERM drains running jobs (up to 30 s) and exits 0.";

/// The ringcrypt daemon: encrypts files for clients on a Unix socket, one pinned io_uring
/// shard per core.
#[derive(Parser, Debug, Default)]
#[command(name = "ringcryptd", version, after_help = AFTER_HELP, max_term_width = 100)]
pub struct Args {
    /// Unix socket to listen on [default: $RINGCRYPT_SOCKET, then /run/ringcrypt/ringcrypt.sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Key ring (TOML, mode 0600, owned by the daemon's user).
    #[arg(long, value_name = "FILE")]
    keys: Option<PathBuf>,
    /// A directory clients may name files under (repeat for several). Nothing outside the
    /// allowed roots is ever read or written.
    #[arg(long = "allow-root", value_name = "DIR")]
    allow_roots: Vec<PathBuf>,
    /// A uid that may use the daemon (repeat for several). With no --allow-uid and no
    /// --allow-gid, anyone who can open the socket may; root and the daemon's uid always may.
    #[arg(long = "allow-uid", value_name = "UID")]
    allow_uids: Vec<u32>,
    /// A primary gid whose members may use the daemon (repeat for several).
    #[arg(long = "allow-gid", value_name = "GID")]
    allow_gids: Vec<u32>,
    /// Shards (threads, one per core) [default: the number of cores].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    shards: Option<u16>,
    /// Configuration file (TOML); command-line flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// `always`: an output is on disk (file and directory fsynced) before `done`;
    /// `never`: atomic but not durable across power loss [default: always].
    #[arg(long, value_enum, value_name = "WHEN")]
    fsync: Option<FsyncArg>,
    /// Chunk size for new files as a power of two, 12 (4 KiB) to 16 (64 KiB) [default: 16].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(CHUNK_LOG2_MIN as i64..=DAEMON_CHUNK_LOG2_MAX as i64))]
    chunk_log2: Option<u8>,
    /// Files at least this many MiB are split into ranges that every shard works on at once
    /// (one large file on every core); 0 never splits [default: 16].
    #[arg(long, value_name = "MIB")]
    split_min_mib: Option<u64>,
    /// How file data moves: `direct` (O_DIRECT: by DMA into the daemon's buffers, past the
    /// page cache, for every file whose file system takes it), `buffered` (through the page
    /// cache; half the buffer memory), `auto` (direct for files of 1 MiB and more on disks,
    /// buffered on tmpfs and for small files) [default: auto].
    #[arg(long, value_enum, value_name = "HOW")]
    io: Option<IoMode>,
    /// Prometheus metrics at http://ADDR/metrics, or `off` [default: 127.0.0.1:9477; if that
    /// default is taken the daemon warns and runs without metrics, an explicit ADDR must bind].
    #[arg(long, value_name = "ADDR|off")]
    metrics: Option<String>,
    /// Whose rights a path job of a caller other than root and the daemon's uid runs with.
    /// `caller`: the caller's own (uid, gid and groups), so the daemon never does for a
    /// caller what it could not do itself; needs CAP_SETUID and CAP_SETGID (root has them),
    /// and without them such path jobs are refused. `daemon`: the daemon's, within the
    /// allowed roots, for every allowed caller alike [default: caller].
    #[arg(long, value_enum, value_name = "WHOSE")]
    path_credentials: Option<PathCredentials>,
    /// Mode of the socket file the daemon creates, in octal (a socket systemd passes keeps
    /// the socket unit's SocketMode=) [default: 0660].
    #[arg(long, value_name = "MODE", value_parser = socket::parse_mode)]
    socket_mode: Option<u32>,
    /// Group (name or gid) the socket file is given, so its members may connect; the
    /// daemon's user must belong to it [default: "", the daemon's group].
    #[arg(long, value_name = "GROUP")]
    socket_group: Option<String>,
    /// The least severe log records written: `error`, `warn` (also refused requests and
    /// failed jobs), `info` (also every accepted request and finished job), `debug`,
    /// `trace` [default: info].
    #[arg(long, value_enum, value_name = "LEVEL")]
    log_level: Option<LogLevel>,
    /// `text` (`audit: accepted uid=0 ...`) or `json` (one object a line) [default: text].
    #[arg(long, value_enum, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
    /// Check the flags, the configuration file, the key ring, the allowed roots and the
    /// socket's group, print what would run, and exit: 0 if all is well, 1 with the problem.
    /// Starts nothing.
    #[arg(long, conflicts_with = "dev")]
    pub check_config: bool,
    /// Try it out: socket and a generated key ring under ./ringcrypt-dev, the current
    /// directory as the allowed root.
    #[arg(long)]
    dev: bool,
}

/// Whose rights path jobs of ordinary callers run with (see `--path-credentials`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathCredentials {
    #[default]
    Caller,
    Daemon,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FsyncArg {
    Always,
    Never,
}

/// The configuration file: every setting of the command line, by the same names.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    socket: Option<PathBuf>,
    keys: Option<PathBuf>,
    #[serde(default)]
    allow_roots: Vec<PathBuf>,
    #[serde(default)]
    allow_uids: Vec<u32>,
    #[serde(default)]
    allow_gids: Vec<u32>,
    shards: Option<u16>,
    fsync: Option<FsyncArg>,
    chunk_log2: Option<u8>,
    split_min_mib: Option<u64>,
    io: Option<IoMode>,
    metrics: Option<String>,
    path_credentials: Option<PathCredentials>,
    #[serde(default, deserialize_with = "socket::deserialize_mode")]
    socket_mode: Option<u32>,
    socket_group: Option<String>,
    log_level: Option<LogLevel>,
    log_format: Option<LogFormat>,
}

/// The settled configuration.
#[derive(Debug)]
pub struct Config {
    pub socket: PathBuf,
    pub keys: PathBuf,
    pub allow_roots: Vec<PathBuf>,
    pub callers: Callers,
    pub shards: usize,
    pub durability: Durability,
    pub chunk_log2: u8,
    /// Files at least this many bytes are split into ranges (0: never).
    pub split_min: u64,
    pub io: IoMode,
    pub metrics: MetricsSetting,
    pub path_credentials: PathCredentials,
    /// `socket_mode` as configured (None: [`socket::DEFAULT_SOCKET_MODE`]).
    pub socket_mode: Option<u32>,
    /// `socket_group` as configured, a name or a gid.
    pub socket_group: Option<String>,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    pub dev: bool,
}

/// Where metrics are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsSetting {
    Off,
    /// The default address: if it is taken, warn and run without metrics.
    Default(SocketAddr),
    /// An address the administrator chose: failing to bind it stops the start.
    Explicit(SocketAddr),
}

/// The metrics address unless told otherwise (README "Metrics, dashboard and alerts").
pub const DEFAULT_METRICS: &str = "127.0.0.1:9477";

fn metrics_setting(text: Option<&str>) -> Result<MetricsSetting, Error> {
    match text {
        None => Ok(MetricsSetting::Default(
            DEFAULT_METRICS.parse().expect("a valid address"),
        )),
        Some("off") => Ok(MetricsSetting::Off),
        Some(addr) => addr.parse().map(MetricsSetting::Explicit).map_err(|_| {
            Error::new(
                Code::BadRequest,
                format!("metrics address {addr:?} is not HOST:PORT (e.g. 127.0.0.1:9477) or off"),
            )
        }),
    }
}

impl Config {
    /// Merges the file (if any) under the command line and applies defaults.
    pub fn from_args(args: Args) -> Result<Config, Error> {
        if args.dev {
            return dev_config(&args);
        }
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::io("read configuration", path, e))?;
                toml::from_str::<FileConfig>(&text).map_err(|e| {
                    Error::new(
                        Code::BadRequest,
                        format!("configuration {}: {}", path.display(), e.message()),
                    )
                })?
            }
            None => FileConfig::default(),
        };
        let socket = args
            .socket
            .or(file.socket)
            .or_else(|| std::env::var_os("RINGCRYPT_SOCKET").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        let keys = args.keys.or(file.keys).ok_or_else(|| {
            Error::new(
                Code::BadRequest,
                "no key ring: pass --keys FILE (or `keys = ...` in --config)",
            )
        })?;
        let allow_roots = if args.allow_roots.is_empty() {
            file.allow_roots
        } else {
            args.allow_roots
        };
        if allow_roots.is_empty() {
            return Err(Error::new(
                Code::BadRequest,
                "no allowed roots: pass --allow-root DIR for each directory clients may use",
            ));
        }
        let chunk_log2 = args
            .chunk_log2
            .or(file.chunk_log2)
            .unwrap_or(CHUNK_LOG2_DEFAULT);
        if !(CHUNK_LOG2_MIN..=DAEMON_CHUNK_LOG2_MAX).contains(&chunk_log2) {
            return Err(Error::new(
                Code::BadRequest,
                format!(
                    "chunk_log2 {chunk_log2} is outside {CHUNK_LOG2_MIN}..={DAEMON_CHUNK_LOG2_MAX}"
                ),
            ));
        }
        let split_min = args
            .split_min_mib
            .or(file.split_min_mib)
            .map_or(SPLIT_MIN_BYTES, |mib| mib << 20);
        let durability = match args.fsync.or(file.fsync).unwrap_or(FsyncArg::Always) {
            FsyncArg::Always => Durability::Fsync,
            FsyncArg::Never => Durability::None,
        };
        let shards = args
            .shards
            .or(file.shards)
            .map(usize::from)
            .unwrap_or_else(cores);
        let metrics = metrics_setting(args.metrics.as_deref().or(file.metrics.as_deref()))?;
        let callers = Callers {
            uids: if args.allow_uids.is_empty() {
                file.allow_uids
            } else {
                args.allow_uids
            },
            gids: if args.allow_gids.is_empty() {
                file.allow_gids
            } else {
                args.allow_gids
            },
        };
        let path_credentials = args
            .path_credentials
            .or(file.path_credentials)
            .unwrap_or_default();
        Ok(Config {
            metrics,
            path_credentials,
            socket_mode: args.socket_mode.or(file.socket_mode),
            socket_group: args.socket_group.or(file.socket_group),
            log_level: args.log_level.or(file.log_level).unwrap_or_default(),
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            callers,
            socket,
            keys,
            allow_roots,
            shards,
            durability,
            chunk_log2,
            split_min,
            io: args.io.or(file.io).unwrap_or_default(),
            dev: false,
        })
    }
}

/// The process's umask, read (and put back) before any shard runs.
fn current_umask() -> u32 {
    let mask = rustix::process::umask(rustix::fs::Mode::empty());
    rustix::process::umask(mask);
    mask.bits()
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// `--dev`: ./ringcrypt-dev holds the socket and a key ring generated on first use; the
/// current directory is the allowed root.
fn dev_config(args: &Args) -> Result<Config, Error> {
    let cwd = std::env::current_dir()
        .map_err(|e| Error::new(Code::IoError, format!("no current directory: {e}")))?;
    let dir = cwd.join("ringcrypt-dev");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io("chmod", &dir, e))?;
    let keys = dir.join("keys.toml");
    if !keys.exists() {
        let entry = keys::keygen_entry("dev")?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&keys)
            .map_err(|e| Error::io("create", &keys, e))?;
        file.write_all(entry.as_bytes())
            .map_err(|e| Error::io("write", &keys, e))?;
    }
    Ok(Config {
        socket: args
            .socket
            .clone()
            .unwrap_or_else(|| dir.join("ringcrypt.sock")),
        keys,
        allow_roots: vec![cwd],
        callers: Callers {
            uids: args.allow_uids.clone(),
            gids: args.allow_gids.clone(),
        },
        shards: args.shards.map(usize::from).unwrap_or_else(cores),
        durability: Durability::Fsync,
        chunk_log2: CHUNK_LOG2_DEFAULT,
        split_min: args.split_min_mib.map_or(SPLIT_MIN_BYTES, |mib| mib << 20),
        io: args.io.unwrap_or_default(),
        metrics: metrics_setting(args.metrics.as_deref())?,
        path_credentials: args.path_credentials.unwrap_or_default(),
        socket_mode: args.socket_mode,
        socket_group: args.socket_group.clone(),
        log_level: args.log_level.unwrap_or_default(),
        log_format: args.log_format.unwrap_or_default(),
        dev: true,
    })
}

/// How often the main thread looks at signals, the watchdog and the status line.
const SUPERVISE_TICK: Duration = Duration::from_millis(50);

/// How often `STATUS=` is sent to the service manager.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// The main thread's loop until SIGTERM/SIGINT: SIGHUP reloads the key ring; `WATCHDOG=1`
/// goes out only while every shard has completed a loop turn within the watchdog interval,
/// so one wedged shard stops the pings and systemd restarts the daemon.
fn supervise(
    config: &Config,
    shared: &Shared,
    notifier: &Notifier,
    mut signals: signal_hook::iterator::Signals,
) {
    let watchdog = notify::watchdog_interval();
    let mut last_ping = Instant::now();
    let mut last_status = Instant::now();
    loop {
        for signal in signals.pending() {
            if signal != signal_hook::consts::SIGHUP {
                return;
            }
            match KeyRing::load_for_daemon(&config.keys) {
                Ok(ring) => {
                    let ring = Arc::new(ring);
                    for shard in 0..config.shards {
                        shared.send_must(shard, Msg::Reload(Arc::clone(&ring)));
                    }
                    log::info!("key ring reloaded ({} keys)", ring.entries().len());
                }
                Err(err) => {
                    log::error!("reload failed, keeping the current key ring: {err}")
                }
            }
        }
        if let Some(interval) = watchdog
            && last_ping.elapsed() >= interval
        {
            let now_ms = shared.started.elapsed().as_millis() as u64;
            let limit_ms = interval.as_millis() as u64;
            let alive = shared.inboxes.iter().all(|inbox| {
                now_ms.saturating_sub(inbox.heartbeat_ms.load(Ordering::Relaxed)) <= limit_ms
            });
            if alive {
                notifier.send("WATCHDOG=1");
                last_ping = Instant::now();
            }
        }
        if notifier.is_active() && last_status.elapsed() >= STATUS_EVERY {
            notifier.send(&status_line(shared));
            last_status = Instant::now();
        }
        std::thread::sleep(SUPERVISE_TICK);
    }
}

/// `STATUS=` for `systemctl status`: connections, jobs and bytes so far.
fn status_line(shared: &Shared) -> String {
    let jobs: u64 = shared
        .inboxes
        .iter()
        .map(|i| i.jobs_done.load(Ordering::Relaxed))
        .sum();
    let bytes: u64 = shared
        .inboxes
        .iter()
        .map(|i| i.bytes_out.load(Ordering::Relaxed))
        .sum();
    let uptime = shared.started.elapsed().as_secs_f64().max(1e-3);
    format!(
        "STATUS=serving: {} connections, {jobs} jobs done, {:.1} MB written ({:.1} MB/s average)",
        shared.connections.load(Ordering::Relaxed),
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / uptime
    )
}

/// Raises the soft descriptor limit to the hard one: every connection, job and tree level
/// holds descriptors, and the default soft limit (1024) is far below what a busy daemon
/// needs. (Under systemd, LimitNOFILE= sets both.)
fn raise_fd_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        let _ = setrlimit(Resource::Nofile, raised);
    }
}

/// Directory entries the start-up sweep looks at, across all roots, before it stops: the
/// sweep must not turn a restart into a walk of a million-file tree.
pub const SWEEP_MAX_ENTRIES: usize = 200_000;

/// Removes named temp files (`.ringcrypt-tmp-*`, regular files owned by `owner`, or by
/// anyone when `owner` is None) that an interrupted job on a filesystem without `O_TMPFILE`
/// left under the allowed roots. A daemon that runs path jobs as their callers made its temp
/// files as them, so it sweeps every owner's; otherwise only its own. Symlinks are never
/// followed. Runs in the background at start; returns what it removed.
pub fn sweep_temp_files(roots: &[PathBuf], owner: Option<u32>) -> usize {
    use std::os::unix::fs::MetadataExt;
    let mut removed = 0;
    let mut seen = 0;
    let mut pending: std::collections::VecDeque<PathBuf> = roots.iter().cloned().collect();
    while let Some(dir) = pending.pop_front() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > SWEEP_MAX_ENTRIES {
                return removed;
            }
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                pending.push_back(entry.path());
            } else if meta.is_file()
                && owner.is_none_or(|uid| meta.uid() == uid)
                && crate::durable::is_temp_name(&entry.file_name())
                && std::fs::remove_file(entry.path()).is_ok()
            {
                removed += 1;
            }
        }
    }
    removed
}

/// Runs the daemon until SIGTERM/SIGINT; returns the exit code.
pub fn run(config: Config) -> Result<(), Error> {
    logging::init(config.log_level, config.log_format)?;
    // Key material must not end up in a core dump or be readable through ptrace by others.
    let _ = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
    raise_fd_limit();
    let ring = Arc::new(KeyRing::load_for_daemon(&config.keys)?);
    if !ring.memory_locked() {
        log::warn!(
            "key memory could not be locked in RAM (mlock; raise LimitMEMLOCK=); \
             keys may reach swap"
        );
    }
    let roots = Roots::open(&config.allow_roots)?;
    let notifier = Notifier::from_env();
    let inherited = notify::inherited_listener().map_err(|e| {
        Error::new(
            Code::Internal,
            format!("the socket passed by systemd is unusable: {e}"),
        )
    })?;
    let activated = inherited.is_some();
    let access = SocketAccess::resolve(config.socket_mode, config.socket_group.as_deref())?;
    // The log names the socket clients reach: under socket activation, the one systemd
    // handed over, whatever --socket says.
    let (listener, listening) = match inherited {
        Some(listener) => {
            if config.socket_mode.is_some()
                || config
                    .socket_group
                    .as_deref()
                    .is_some_and(|g| !g.is_empty())
            {
                log::warn!(
                    "socket_mode and socket_group do not apply to the socket systemd passed; \
                     its socket unit's SocketMode= and SocketGroup= do"
                );
            }
            let name = notify::listener_name(&listener);
            (listener, format!("{name} (passed by systemd)"))
        }
        None => (
            socket::bind(&config.socket, &access)?,
            config.socket.display().to_string(),
        ),
    };
    let backend = match std::env::var("RINGCRYPT_BACKEND").ok().as_deref() {
        Some("sync") => BackendKind::Sync,
        Some("uring") | Some("io_uring") => BackendKind::Uring,
        Some(other) => {
            return Err(Error::new(
                Code::BadRequest,
                format!("RINGCRYPT_BACKEND={other:?}: use sync or uring"),
            ));
        }
        // Decided once, here, so every shard runs the same backend, the listener's blocking
        // mode matches it, and the metrics can name it before the first request.
        None => match Reactor::probe_uring() {
            Ok(()) => BackendKind::Uring,
            Err(err) => {
                log::warn!("io_uring is not available ({err}); using the synchronous backend");
                BackendKind::Sync
            }
        },
    };
    if backend == BackendKind::Sync {
        rustix::io::ioctl_fionbio(&listener, true)
            .map_err(|e| Error::io("configure", &config.socket, e.into()))?;
    }
    let mut inboxes = Vec::with_capacity(config.shards);
    for _ in 0..config.shards {
        inboxes.push(
            Shared::new_inbox().map_err(|e| Error::new(Code::Internal, format!("eventfd: {e}")))?,
        );
    }
    let shared = Arc::new(Shared {
        inboxes,
        callers: config.callers.clone(),
        roots,
        durability: config.durability,
        chunk_log2: config.chunk_log2,
        split_min: config.split_min,
        io: config.io,
        umask: current_umask(),
        keys_path: config.keys.clone(),
        daemon_uid: rustix::process::geteuid().as_raw(),
        act_as_callers: config.path_credentials == PathCredentials::Caller,
        can_act_as: crate::daemon::creds::can_act_as_callers(),
        version: env!("CARGO_PKG_VERSION"),
        connections: AtomicUsize::new(0),
        started: Instant::now(),
    });
    {
        let roots = config.allow_roots.clone();
        let owner = (!(shared.act_as_callers && shared.can_act_as)).then_some(shared.daemon_uid);
        std::thread::Builder::new()
            .name("sweep".into())
            .spawn(move || {
                let removed = sweep_temp_files(&roots, owner);
                if removed > 0 {
                    log::info!("removed {removed} temp file(s) left by interrupted jobs");
                }
            })
            .map_err(|e| {
                Error::new(
                    Code::Internal,
                    format!("cannot start the sweep thread: {e}"),
                )
            })?;
    }
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| {
        Error::new(
            Code::Internal,
            format!("cannot install signal handlers: {e}"),
        )
    })?;

    // The recorder goes in before the shards start: they take their metric handles at birth.
    let metrics_addr = match config.metrics {
        MetricsSetting::Off => None,
        MetricsSetting::Explicit(addr) => Some(metrics::install(addr, config.shards)?.addr),
        MetricsSetting::Default(addr) => match metrics::install(addr, config.shards) {
            Ok(exporter) => Some(exporter.addr),
            Err(err) => {
                log::warn!("running without metrics: {err}");
                None
            }
        },
    };
    if metrics_addr.is_some() {
        // Every series exists (at zero) before the socket serves: dashboards and alerts see
        // the whole daemon from the first scrape.
        metrics::build_info(env!("CARGO_PKG_VERSION"), backend.as_str());
        metrics::preregister(config.shards);
    }
    let core_ids = core_affinity::get_core_ids().unwrap_or_default();
    let buffers = (RUNNING_JOBS_PER_SHARD + RANGE_JOBS_RESERVED_PER_SHARD) * BUFFERS_PER_JOB as u16;
    // Direct IO seals and opens out of place between two aligned areas of a buffer.
    let buf_bytes = match config.io {
        IoMode::Buffered => pool_buf_bytes(DAEMON_CHUNK_LOG2_MAX),
        IoMode::Auto | IoMode::Direct => direct_buf_bytes(DAEMON_CHUNK_LOG2_MAX),
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    // No shard serves until every shard is built: otherwise shard 0 could accept and answer
    // while another is still allocating and registering its buffers. (If a shard fails to
    // build, the daemon exits with its error and the others never pass.)
    let all_built = Arc::new(std::sync::Barrier::new(config.shards));
    let mut listener = Some(listener);
    let mut threads = Vec::with_capacity(config.shards);
    for index in 0..config.shards {
        let shared = Arc::clone(&shared);
        let ring = Arc::clone(&ring);
        let listener = if index == 0 { listener.take() } else { None };
        let core = (!core_ids.is_empty()).then(|| core_ids[index % core_ids.len()]);
        let ready = ready_tx.clone();
        let all_built = Arc::clone(&all_built);
        let thread = std::thread::Builder::new()
            .name(format!("shard-{index}"))
            .spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                match Shard::new(
                    index,
                    shared,
                    ring,
                    listener,
                    Some(backend),
                    buffers,
                    buf_bytes,
                ) {
                    Ok((shard, warning)) => {
                        let _ = ready.send(Ok((shard.backend(), warning)));
                        all_built.wait();
                        shard.run();
                    }
                    Err(err) => {
                        let _ = ready.send(Err(err));
                    }
                }
            })
            .map_err(|e| Error::new(Code::Internal, format!("cannot start a shard thread: {e}")))?;
        threads.push(thread);
    }
    drop(ready_tx);
    let mut kind = None;
    let mut warned = false;
    for _ in 0..config.shards {
        match ready_rx.recv() {
            Ok(Ok((backend, warning))) => {
                kind = Some(backend);
                if let Some(warning) = warning
                    && !warned
                {
                    log::warn!("{warning}");
                    warned = true;
                }
            }
            Ok(Err(err)) => {
                return Err(Error::new(
                    Code::Internal,
                    format!("a shard could not start: {err}"),
                ));
            }
            Err(_) => {
                return Err(Error::new(
                    Code::Internal,
                    "a shard thread died while starting",
                ));
            }
        }
    }
    let backend = kind.map(BackendKind::as_str).unwrap_or("none");
    log::info!(
        "listening on {} (version {}, {} shards, {backend} backend, fsync {}, roots: {})",
        listening,
        env!("CARGO_PKG_VERSION"),
        config.shards,
        if config.durability == Durability::Fsync {
            "always"
        } else {
            "never"
        },
        config
            .allow_roots
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    );
    log::info!(
        "path jobs of callers other than root and uid {} {}",
        shared.daemon_uid,
        match (shared.act_as_callers, shared.can_act_as) {
            (true, true) => "run with the caller's uid, gid and groups",
            (true, false) => {
                "are refused: no CAP_SETUID/CAP_SETGID to act as the caller \
                 (descriptor jobs work; see --path-credentials)"
            }
            (false, _) => "run with the daemon's rights (--path-credentials daemon)",
        }
    );
    if config.dev {
        log::info!(
            "dev mode: key ring {}; try\n  RINGCRYPT_SOCKET={} ringcrypt encrypt FILE",
            config.keys.display(),
            config.socket.display()
        );
    }

    if let Some(addr) = metrics_addr {
        log::info!("metrics at http://{addr}/metrics");
    }
    // The socket listens, the key ring is loaded and every shard runs: ready.
    notifier.send("READY=1");
    notifier.send(&status_line(&shared));
    supervise(&config, &shared, &notifier, signals);
    notifier.send("STOPPING=1");
    log::info!(
        "stopping: finishing running jobs (up to {} s)",
        DRAIN_TIMEOUT.as_secs()
    );
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    for shard in 0..config.shards {
        shared.send_must(shard, Msg::Shutdown { deadline });
    }
    // Each shard exits by itself at the latest SHUTDOWN_GRACE after the deadline; one that
    // does not (stuck in the kernel) must not keep the process alive past its stop timeout.
    let give_up = deadline + SHUTDOWN_GRACE + SHUTDOWN_JOIN_SLACK;
    let mut stuck = Vec::new();
    for (index, thread) in threads.into_iter().enumerate() {
        while !thread.is_finished() && Instant::now() < give_up {
            std::thread::sleep(Duration::from_millis(10));
        }
        if thread.is_finished() {
            let _ = thread.join();
        } else {
            stuck.push(index.to_string());
        }
    }
    if !activated {
        let _ = std::fs::remove_file(&config.socket);
    }
    if !stuck.is_empty() {
        return Err(Error::new(
            Code::Internal,
            format!(
                "shard(s) {} did not stop within {} s of SIGTERM; exiting without them",
                stuck.join(", "),
                (give_up - (deadline - DRAIN_TIMEOUT)).as_secs()
            ),
        ));
    }
    log::info!("stopped");
    logging::flush();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_removes_only_our_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        std::fs::create_dir_all(&nested).unwrap();
        std::fs::write(nested.join(".ringcrypt-tmp-0011223344556677"), b"debris").unwrap();
        std::fs::write(nested.join("keep.txt"), b"data").unwrap();
        std::fs::write(dir.path().join(".ringcrypt-tmpX"), b"not ours: no dash").unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join(".ringcrypt-tmp-ff"), b"outside").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        let uid = rustix::process::geteuid().as_raw();
        assert_eq!(sweep_temp_files(&[dir.path().to_path_buf()], Some(uid)), 1);
        assert!(nested.join("keep.txt").exists());
        assert!(!nested.join(".ringcrypt-tmp-0011223344556677").exists());
        assert!(dir.path().join(".ringcrypt-tmpX").exists());
        assert!(
            outside.path().join(".ringcrypt-tmp-ff").exists(),
            "followed a symlink"
        );
    }
}
