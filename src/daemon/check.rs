//! `ringcryptd --check-config`: everything the daemon would check before serving, without
//! serving. The flags and the configuration file are merged and validated as at start, the
//! key ring is loaded (mode, owner, syntax, a usable key), every allowed root is opened and
//! the socket's group is looked up; then the settled configuration is printed and the exit
//! code is 0, or the first problem is printed and the exit code is 1, as `nginx -t` does.
//!
//! What this room does not do: bind the socket, start shards or touch the metrics address
//! (a running daemon may hold both).

use std::process::ExitCode;

use clap::ValueEnum;

use crate::crypto::keys::KeyRing;
use crate::daemon::roots::Roots;
use crate::daemon::socket::SocketAccess;
use crate::daemon::{Args, Config, MetricsSetting};
use crate::durable::Durability;
use crate::error::Error;

/// Runs the check and prints its outcome: the configuration on stdout (exit 0), or the
/// problem on stderr (exit 1).
pub fn main(args: Args) -> ExitCode {
    match check(args) {
        Ok(summary) => {
            print!("{summary}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("ringcryptd: configuration check failed: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Checks what the daemon would start with; the settled configuration, or the first problem.
pub fn check(args: Args) -> Result<String, Error> {
    let config = Config::from_args(args)?;
    let ring = KeyRing::load_for_daemon(&config.keys)?;
    Roots::open(&config.allow_roots)?;
    let access = SocketAccess::resolve(config.socket_mode, config.socket_group.as_deref())?;
    let default = ring
        .default_entry()
        .map(|entry| entry.name.as_str())
        .unwrap_or("none");
    let roots: Vec<String> = config
        .allow_roots
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let metrics = match config.metrics {
        MetricsSetting::Off => "off".to_string(),
        MetricsSetting::Default(addr) | MetricsSetting::Explicit(addr) => {
            format!("http://{addr}/metrics")
        }
    };
    Ok(format!(
        "ringcryptd: the configuration is valid\n\
         socket:           {} ({}; a socket systemd passes keeps its unit's settings)\n\
         key ring:         {} ({} keys, default {default})\n\
         allowed roots:    {}\n\
         shards:           {}\n\
         fsync:            {}\n\
         chunk_log2:       {}\n\
         io:               {}\n\
         metrics:          {metrics}\n\
         path credentials: {}\n\
         log:              level {}, format {}\n",
        config.socket.display(),
        access.describe(),
        config.keys.display(),
        ring.entries().len(),
        roots.join(", "),
        config.shards,
        if config.durability == Durability::Fsync {
            "always"
        } else {
            "never"
        },
        config.chunk_log2,
        spelled(config.io),
        spelled(config.path_credentials),
        spelled(config.log_level),
        spelled(config.log_format),
    ))
}

/// A setting as its flag spells it (`caller`, `info`, `text`).
fn spelled(value: impl ValueEnum) -> String {
    value
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}
