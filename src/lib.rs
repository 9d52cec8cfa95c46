//! ringcrypt: authenticated file encryption at the speed of the hardware.
//!
//! `docs/architecture.md` has the map: what each room owns and must not do, and the path of
//! one encrypt job and one tree job through them, function by function. The file format is
//! specified in `docs/format.md`, the socket protocol in `docs/protocol.md`.
//!
//! The rooms, by side:
//! - Shared: [`limits`] (every fixed bound, with its reason), [`error`] (the error type and
//!   its wire codes), [`protocol`] (the JSON-lines wire format; no IO), [`tree_rules`] (a
//!   tree's naming, skip and partition rules, for both engines and the CLI),
//!   [`partition_marker`] (the marker at a partitioned tree's output root, written and checked
//!   the same way by both engines), [`durable`] (what both
//!   engines agree on about outputs in the making), `failpoint` (the test suite's hooks, empty
//!   in real builds).
//! - [`crypto`]: [`lanes`] (multi-lane AES-256-CBC), [`sha_mb`] (multi-buffer HMAC-SHA256),
//!   [`format`](mod@format) (RCRYPT v1: header, keys, chunk sealer and opener), [`openssl`]
//!   (the unauthenticated compatibility format), [`keys`] (the key ring). No IO; nothing
//!   outside themselves but `error` and `limits`.
//! - [`daemon`]: `ringcryptd`'s setup (configuration, socket, shards, signals) and its
//!   rooms, private to the crate but [`creds`]: `reactor` (a shard's io_uring or sync
//!   fallback, op slab, buffer pool), `shard` (a pinned thread: inbox, connections, verdicts,
//!   job table, file and tree jobs), `job` (one file job's state machine), `tree_job` (one
//!   tree walk), `token` (what an op's completion is for), `roots` (confined paths), `creds`
//!   (a client's identity, and acting as it), `metrics`, `notify`. It never imports the
//!   offline engine or the client.
//! - [`offline`]: file jobs in the client's process (`--keys`), with [`stream`] (sealing and
//!   opening over `Read`/`Write`), [`output`] (atomic output files) and [`tree`] (trees, a
//!   worker per core).
//! - [`client`]: the connection to the daemon, and [`cli`], the `ringcrypt` command line.

#![deny(unsafe_code)]

pub mod assets;
pub mod client;
pub mod crypto;
pub mod daemon;
pub mod durable;
pub mod error;
pub(crate) mod failpoint;
pub mod limits;
pub mod offline;
pub mod partition_marker;
pub mod protocol;
pub mod tree_rules;

// The paths the binaries, tests, benches and fuzz targets use, kept short and stable as the
// rooms moved into their sides.
pub use client::cli;
pub use crypto::{format, keys, lanes, openssl, sha_mb};
pub use daemon::creds;
pub use offline::{output, stream, tree};

pub use error::{Code, Error};
