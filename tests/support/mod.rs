//! What the integration tests share, one copy each:
//!
//! - [`both_backends!`]: each scenario once per IO backend;
//! - [`daemon`]: the real `ringcryptd` on a temp directory, one builder for every test that
//!   starts one ([`Daemon::builder`]), stopped on drop as the test asks (SIGTERM and exit 0 by
//!   default);
//! - [`client`]: a JSON-lines client over `std::os::unix::net::UnixStream`, and the shapes of
//!   requests and replies; every reply it reads is checked against `docs/protocol.schema.json`
//!   ([`schema`]);
//! - [`run`]: the `ringcrypt` binary run to completion ([`Run`]) and other commands with a
//!   time bound;
//! - [`nobody`]: acting as `nobody` (uid 65534): a small Python client under `setpriv`, the
//!   `ringcrypt` client or a shell as nobody;
//! - [`files`]: test data, key rings, file checks, and what `/proc` says about a process.
//!
//! Each test crate declares it with `#[macro_use] mod support;` (from a `tests/NAME/`
//! directory, with `#[path = "../support/mod.rs"]`). `quiet_client.rs` beside it is not a
//! module of it: `tests/allocs.rs` and `benches/allocs/` include that file on its own.

#![allow(dead_code, unused_macros)]

/// Each scenario `fn NAME(backend: &'static str)` listed, once per IO backend: tests
/// `uring::NAME` (`RINGCRYPT_BACKEND=uring`) and `sync::NAME` (`=sync`).
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod uring {
            $(#[test] fn $name() { super::$name("uring"); })*
        }
        mod sync {
            $(#[test] fn $name() { super::$name("sync"); })*
        }
    };
}

pub mod client;
pub mod daemon;
pub mod files;
pub mod nobody;
pub mod run;
pub mod schema;

// Every test crate takes what it needs from here (`use support::*`).
#[allow(unused_imports)]
pub use {client::*, daemon::*, files::*, nobody::*, run::*};

use std::time::Duration;

pub const DAEMON: &str = env!("CARGO_BIN_EXE_ringcryptd");
pub const CLI: &str = env!("CARGO_BIN_EXE_ringcrypt");

/// How long a client waits for one reply line.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the daemon may take to answer its first ping.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long SIGTERM may take (the daemon's drain timeout is 30 s).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(40);

/// The name prefix of the daemon's named temp files (README "Security").
pub const TEMP_PREFIX: &str = ".ringcrypt-tmp-";
