//! The daemon under measurement, run inside the allocs bench's own process: its key ring from
//! the library's `keygen`, `ringcrypt::daemon::run` on a thread of its own with the options
//! the bench chose, the bounded wait for its first `pong`, and the pong's fields for the
//! header.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;

use crate::Options;
use crate::quiet_client::Conn;
use crate::support::write_private;

/// A fresh key ring, mode 0600, from the library's `keygen`.
pub fn make_key_ring(dir: &Path) -> PathBuf {
    let entry = ringcrypt::keys::keygen_entry("bench").expect("generate a key");
    let path = dir.join("keys.toml");
    write_private(&path, entry.as_bytes());
    path
}

/// How long a reply may take before the bench gives up.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// Starts the daemon on its own thread and waits for its first `pong`.
pub fn start_daemon(scratch: &Path, keys: &Path, socket: &Path, opts: &Options) -> String {
    let mut argv: Vec<String> = vec!["ringcryptd".into()];
    let mut arg = |a: &str| argv.push(a.to_string());
    arg("--socket");
    arg(socket.to_str().expect("UTF-8 scratch path"));
    arg("--keys");
    arg(keys.to_str().expect("UTF-8 scratch path"));
    arg("--allow-root");
    arg(scratch.to_str().expect("UTF-8 scratch path"));
    arg("--fsync");
    arg("never");
    arg("--metrics");
    arg(if opts.metrics { "127.0.0.1:0" } else { "off" });
    if let Some(n) = &opts.shards {
        arg("--shards");
        arg(n);
    }
    let args = ringcrypt::daemon::Args::parse_from(&argv);
    let config = ringcrypt::daemon::Config::from_args(args).expect("a valid configuration");
    let failed = std::sync::Arc::new(AtomicBool::new(false));
    let flag = std::sync::Arc::clone(&failed);
    thread::Builder::new()
        .name("ringcryptd".into())
        .spawn(move || {
            if let Err(err) = ringcrypt::daemon::run(config) {
                eprintln!("ringcryptd: error: {err}");
                flag.store(true, Ordering::SeqCst);
            }
        })
        .expect("start the daemon thread");
    let deadline = Instant::now() + Duration::from_secs(20);
    let ping = b"{\"op\":\"ping\"}\n";
    while Instant::now() < deadline {
        assert!(
            !failed.load(Ordering::SeqCst),
            "the daemon did not start (see its stderr)"
        );
        if let Ok(mut conn) = Conn::connect(socket, REPLY_TIMEOUT) {
            let pong = conn.request_text(ping);
            if pong.starts_with("{\"type\":\"pong\"") {
                return pong;
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("the daemon did not answer ping within 20 s");
}

/// A JSON field of the pong, for the header.
pub fn pong_field(pong: &str, name: &str) -> String {
    serde_json::from_str::<serde_json::Value>(pong)
        .ok()
        .and_then(|v| {
            v.get(name).map(|f| match f.as_str() {
                Some(text) => text.to_string(),
                None => f.to_string(),
            })
        })
        .unwrap_or_else(|| "?".into())
}
