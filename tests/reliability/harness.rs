//! The daemon these tests start (`support::Daemon`, set up as described in `main.rs`).

use std::time::Duration;

use crate::support::{Builder, Daemon};

/// How long SIGTERM may take: the drain timeout (30 s) and some slack.
pub const SIGTERM_BOUND: Duration = Duration::from_secs(40);

/// A daemon on its own directory under /tmp that `nobody` can reach, with
/// `--fsync never --metrics off --shards 2` and its socket made 0666 once it listens.
pub fn rd(backend: &'static str) -> Builder {
    Daemon::builder(backend).for_nobody().metrics("off")
}
