//! ringcrypt: authenticated file encryption at the speed of the hardware.
//!
//! `docs/architecture.md` has the map: what each room owns and must not do, and the path of
//! one encrypt job and one tree job through them, function by function. The file format is
//! specified in `docs/format.md`, the socket protocol in `docs/protocol.md`.
//!
//! The rooms, from the bytes up (the daemon's own rooms are private to the crate; what tests,
//! benches and fuzz targets use stays public):
//! - [`limits`]: every fixed bound, with the reason for it.
//! - [`error`]: the error type and its wire codes.
//! - `failpoint`: the test suite's hooks (kill at a step, wedge a shard), empty in real builds.
//! - [`lanes`]: multi-lane AES-256-CBC (eight chains in lockstep).
//! - [`sha_mb`]: multi-buffer HMAC-SHA256 (four SHA-NI chains interleaved, portable fallback).
//! - [`format`](mod@format): RCRYPT v1 header, key derivation, chunk sealer and opener. No IO.
//! - [`openssl`]: the unauthenticated `openssl enc` compatibility format.
//! - [`keys`]: the TOML key ring; key pages locked in RAM.
//! - [`protocol`]: the JSON-lines wire format and its limits; no IO.
//! - `reactor`: a shard's io_uring (or synchronous fallback), op slab and buffer pool.
//! - `roots`: allowed roots and confined path resolution.
//! - [`creds`]: a client's identity (SO_PEERCRED, SO_PEERGROUPS) and acting as it.
//! - `token`: what an op's completion is for (a typed token, packed in one place).
//! - `job`: one file job's state machine on its owner shard.
//! - `shard`: a pinned thread with its inbox, connections, the verdict on each request, its
//!   job table, and the file and tree jobs it runs.
//! - `metrics`: Prometheus metrics, the only place their names are spelled.
//! - `notify`: `sd_notify` and socket activation.
//! - [`daemon`]: `ringcryptd` setup: configuration, socket, shards, signals.
//! - [`stream`]: sealing and opening over `Read`/`Write`.
//! - [`durable`]: what both engines share about outputs in the making: durability, temp names.
//! - [`output`]: atomic, durable output files (the offline engine's).
//! - [`offline`]: file jobs run in this process (the client's `--keys` mode).
//! - [`tree`]: directory-tree jobs in this process: the walk and a worker per core running
//!   `offline`'s file jobs.
//! - `tree_job`: one directory-tree job of the daemon, walked on the shard that received it.
//! - [`tree_rules`]: a tree's naming and skip rules, one source for both engines and the CLI.
//! - [`client`]: the client's side of the socket: connect, send a request, read its replies.
//! - [`cli`]: the `ringcrypt` command line.

#![deny(unsafe_code)]

pub mod cli;
pub mod client;
pub mod creds;
pub mod daemon;
pub mod durable;
pub mod error;
pub(crate) mod failpoint;
pub mod format;
pub(crate) mod job;
pub mod keys;
pub mod lanes;
pub mod limits;
pub(crate) mod metrics;
pub(crate) mod notify;
pub mod offline;
pub mod openssl;
pub mod output;
pub mod protocol;
pub(crate) mod reactor;
pub(crate) mod roots;
pub mod sha_mb;
pub(crate) mod shard;
pub mod stream;
pub(crate) mod token;
pub mod tree;
pub(crate) mod tree_job;
pub mod tree_rules;

pub use error::{Code, Error};
