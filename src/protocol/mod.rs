//! The socket protocol (docs/protocol.md): the JSON-lines wire format between `ringcrypt` and
//! `ringcryptd`, in one place. This module documents the whole format (below) and owns its
//! vocabulary: the ops ([`Request`], [`FileOp`], [`FileJobSpec`]), request and job ids
//! ([`RequestId`], [`JobId`]), what replies carry ([`DoneReport`], [`Progress`],
//! [`JobInfo`], [`ShardStats`], [`KeyInfo`]) and every limit. The work is done in its
//! submodules, whose public items are re-exported here, so that each is `protocol::X`:
//!
//! - `request`: the daemon's side of a request line: [`parse_request`] and
//!   [`parse_request_reusing`], with path normalization and the recycled path buffers of
//!   [`SparePaths`].
//! - `reply`: the daemon's side of a reply line: one encoder per reply type, allocation-free
//!   into a caller's buffer ([`write_done`], ...) or as a `String` ([`done`], ...).
//! - `client`: the client's side of both: [`encode_request`], and reading a reply line once
//!   ([`parse_reply`]) into its id and a typed [`ReplyLine`].
//!
//! It does **not** do IO (the server reads and writes the lines, and cuts them at
//! [`MAX_REQUEST_LINE_BYTES`] before they get here), authorization (`SO_PEERCRED` and admin
//! checks belong to the server), or path resolution against the allowed roots (the job does
//! that with `openat2`). Paths leave this module absolute and lexically normalized, nothing
//! more: no file system is consulted.
//!
//! # Wire format
//!
//! Each direction carries UTF-8 JSON objects, one per line, each line ending in `\n`. A
//! request line is at most [`MAX_REQUEST_LINE_BYTES`] (64 KiB) before its newline. Reply lines
//! have no fixed bound (a `jobs` list grows with the job table) but are always one line.
//!
//! ## Requests
//!
//! Every request has `"op"`, a string, and may have `"id"`: any JSON scalar (string, number,
//! `true`, `false`, `null`). Every reply line about that request echoes the id; a request
//! without one gets replies without one. Strings and integers that fit in 64 bits come back
//! exactly as sent; other numbers come back as the same value, possibly spelled differently
//! (`1.50` as `1.5`), so use strings or small integers.
//!
//! A field the op does not define is refused with `bad_request`, so a misspelt option
//! (`"overwirte"`) never silently does nothing. Optional fields are left out to get their
//! default; `null` is not a value for any field but `id`. A field may appear only once.
//!
//! | op | fields (`?` = optional, with its default) | replies |
//! | --- | --- | --- |
//! | `ping` | | `pong` |
//! | `encrypt` | `input`, `output`, `key?`, `format?` = `"ringcrypt"`, `recursive?` = false, `overwrite?` = false, `skip_existing?` = false, `wait?` = true, `fds?` = false, `partition?` | `accepted`, then `progress`* (recursive jobs), then `done` or `error` |
//! | `decrypt` | `input`, `output`, `key?`, `recursive?`, `overwrite?`, `skip_existing?`, `wait?`, `fds?`, `partition?` | same |
//! | `rewrap` | `input`, `output`, `key?`, `recursive?`, `overwrite?`, `skip_existing?`, `wait?`, `fds?`, `partition?` | same |
//! | `encrypt`, `decrypt`, `rewrap` as a batch | `inputs`, `outputs`, `key?`, `format?`, `overwrite?`, `skip_existing?`, `wait?`, `progress?` | `accepted`, a `file` line per file, `done` or `error` |
//! | `verify` as a batch | `inputs`, `wait?`, `progress?` | same |
//! | `status` | `job` | `status` |
//! | `cancel` | `job` | `cancelled` |
//! | `jobs` | | `jobs` |
//! | `stats` | | `stats` |
//! | `keys` | | `keys` (names, ids and states; never key bytes) |
//! | `reload` | | `reloaded` (admin only) |
//!
//! The file-job fields:
//!
//! - `input`, `output` (strings): absolute paths. With `recursive`, directories. They are
//!   normalized lexically: `.` components and repeated or trailing `/` are dropped. A path
//!   that is relative, empty, contains `..` or a NUL byte, or is longer than
//!   [`MAX_PATH_BYTES`] is refused with `bad_request`. The `ringcrypt` client resolves
//!   relative paths against its own working directory before sending. File names must be
//!   UTF-8 to be named in a request.
//! - `key` (string, 1 to [`MAX_KEY_NAME_BYTES`] bytes, no control characters): for
//!   `encrypt`, the key to seal under (default: the key ring's default); for `decrypt` and
//!   `rewrap`, the passphrase entry for `openssl`-format inputs (ringcrypt files name their
//!   own key, and `rewrap` always seals under the default key).
//! - `format` (`encrypt` only): `"ringcrypt"` (authenticated, the default) or `"openssl"`
//!   (unauthenticated, for legacy archives). `decrypt` and `rewrap` read the format from the
//!   input, so `format` on them is refused rather than ignored.
//! - `recursive` (bool): `input` is a directory; every regular file under it becomes one file
//!   of the job, written to the same relative path under `output`.
//! - `overwrite` (bool): replace an existing output atomically instead of failing with
//!   `exists`.
//! - `skip_existing` (bool): leave an existing output alone and count it in `files_skipped`
//!   instead of failing with `exists`. Not together with `overwrite`.
//! - `wait` (bool): when false, the reply is `accepted` alone; follow the job with `status`.
//! - `fds` (bool): the input and the output come as two descriptors passed with this line
//!   (`SCM_RIGHTS`, in the same `sendmsg` as the line's first byte): first the input, open for
//!   reading, then an unnamed temp file (`O_TMPFILE`) open for writing, made by the caller in
//!   the output's directory. The kernel checked the caller's own permissions when it opened
//!   them, so no allowed root applies; `input` and `output` are only names for messages and
//!   the audit log. The daemon writes the temp file and makes it durable; the caller links it
//!   into place. Single files only: not with `recursive` or `skip_existing`.
//! - `partition` (string `"I/N"`, with `recursive` only): take only the tree's entries whose
//!   partition hash modulo N is I (docs/fleet.md); directories are all mirrored. The output
//!   root's marker records N, and a run with another N is refused (`partition_mismatch`).
//! - `inputs`, `outputs` (arrays of strings, a batch: [`BatchSpec`]): many files in one
//!   request, each path as `input` and `output` take it, as many outputs as inputs (`verify`
//!   takes `inputs` alone). The first bad path refuses the request, naming it
//!   (`inputs[3]`). Not with `input`, `output`, `recursive`, `fds` or `partition`.
//!
//! `status` and `cancel` take `job`, a job id as `accepted` gave it: `"<shard>-<seq>"`, both
//! decimal without leading zeros (`"1-42"`). The shard part sends the request straight to the
//! shard that owns the job.
//!
//! ## Replies
//!
//! Every reply is an object whose first field is `"type"`, followed by `"id"` when the
//! request had one. Paths in replies are strings; a name that is not UTF-8 is shown with
//! U+FFFD in place of its invalid bytes. Byte counts, file counts and durations are unsigned
//! integers.
//!
//! | type | fields |
//! | --- | --- |
//! | `pong` | `version` (string), `shards` (integer), `backend` (`"uring"` or `"sync"`) |
//! | `accepted` | `job` |
//! | `progress` | `job`, `files_done`, `files_total`, `bytes_done`, `bytes_total`, `rate_bytes_per_sec`, `totals_final` (bool: false while a tree is still being walked and the totals may grow) |
//! | `file` | a batch's file ended: `job`, `index` (in `inputs`), then `bytes_in`, `bytes_out`, `micros`, or `skipped`, or `code` and `message` |
//! | `done` | `job`, `bytes_in`, `bytes_out`, `micros`, `files_ok`, `files_failed`, `files_skipped`, `failures` (array of `{path, code, message}`, at most [`MAX_FAILURES_REPORTED`]), `failures_omitted` (integer) only when more files failed than are listed, `skipped` (array of `{path, reason}`: entries of a tree that were not processed, at most [`MAX_FAILURES_REPORTED`]), and `skipped_omitted` (integer) only when more were skipped than are listed |
//! | `status` | `job`, `state` (`queued`, `running`, `done`, `failed` or `cancelled`), `progress` (`{bytes_done, bytes_total}`), `op`, `input`, `output` |
//! | `cancelled` | `job` |
//! | `jobs` | `jobs`: array of `{job, op, input, output, state, progress}` as in `status` |
//! | `stats` | `shards`: array of `{shard, queued, running, jobs_done, bytes_in, bytes_out}` |
//! | `keys` | `default` (string or null), `keys`: array of `{name, id, kind, state}`; `id` is 32 hex digits or null (passphrases have none), `kind` is `ringcrypt` or `openssl`, `state` is `active`, `decrypt-only` or `retired` |
//! | `reloaded` | `keys` (integer: how many keys the new ring holds) |
//! | `error` | `code`, `message` (names the file and the cause in words a person can act on) |
//!
//! A file job's replies end with exactly one `done` or `error` line. A `done` job may still
//! have failed files (`files_failed` > 0) in a recursive job or a batch; a single-file job
//! that fails ends with `error`.
//!
//! ## Error codes
//!
//! `bad_request` (malformed request), `unknown_op`, `too_large` (request line over the
//! limit), `not_found`, `permission_denied`, `forbidden_path` (outside the allowed roots, or
//! through a symlink), `exists` (output exists, no `overwrite`), `auth_failed` (tampered,
//! truncated or wrong-key ciphertext), `unknown_key`, `key_retired`, `bad_format` (not a
//! ringcrypt or openssl file), `busy` (queues full, try again), `timeout`, `cancelled`,
//! `io_error`, `no_space`, `shutting_down`, `internal`, `partition_mismatch` (a partitioned
//! tree whose N differs from its output root's marker).
//!
//! **This list may grow**: ops, fields, reply types and error codes may be added, never
//! renamed or given a new meaning. Clients must ignore reply fields and reply types they do not
//! know, and treat an error code they do not know as a failure.

#![forbid(unsafe_code)]

mod client;
mod raw_fields;
mod reply;
mod request;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use crate::error::{Code, Error};

pub use client::{
    ByteCounts, Done, FailedFile, JobEntry, KeyEntry, KeyList, Pong, Reply, ReplyLine,
    encode_request, parse_reply,
};
pub use reply::{
    BatchFileEnd, accepted, cancelled, done, error, jobs, keys, pong, progress, reloaded, stats,
    status, write_accepted, write_cancelled, write_done, write_error, write_file_end,
    write_progress, write_status,
};
pub use request::{Parsed, SPARE_PATH_MAX_BYTES, SparePaths, parse_request, parse_request_reusing};

use reply::json;

/// Longest request line accepted, newline excluded (docs/protocol.md): 64 KiB. A request is a few
/// hundred bytes (two paths and some flags); the bound lets a connection's read buffer be
/// fixed in size and keeps one client from making the daemon buffer without limit.
pub const MAX_REQUEST_LINE_BYTES: usize = 64 * 1024;

/// Most failures listed in one `done` reply (docs/protocol.md). A tree job can fail on millions of
/// files; the reply stays one readable line, and `failures_omitted` counts the rest (the
/// daemon's log has every one).
pub const MAX_FAILURES_REPORTED: usize = 100;

/// Longest key name accepted in a request. Names in a key ring are short labels
/// (`prod-2026`); a longer one cannot name a real key, and bounding it bounds the messages
/// that quote it.
pub const MAX_KEY_NAME_BYTES: usize = 256;

/// Longest path accepted, after normalization: Linux's `PATH_MAX` (4096) less its NUL
/// terminator. The kernel refuses longer paths with `ENAMETOOLONG` anyway; refusing them here
/// gives a clearer message and bounds what a job carries between shards.
pub const MAX_PATH_BYTES: usize = 4095;

/// Most characters of a client-chosen string (an op name, a field name, a path) quoted back
/// in an error message, so an error about a 60 KiB string is not itself 60 KiB.
const MAX_QUOTED_CHARS: usize = 80;

/// A request id: any JSON scalar (string, number, bool, null), echoed verbatim in every reply.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestId(Value);

impl RequestId {
    /// Wraps a JSON scalar. Arrays and objects are refused with `bad_request`: an id is a
    /// label to match replies to requests, and a scalar compares simply.
    pub fn new(value: Value) -> Result<RequestId, Error> {
        match value {
            Value::Array(_) | Value::Object(_) => Err(Error::new(
                Code::BadRequest,
                format!(
                    "field \"id\" must be a string, a number, true, false or null, not {}",
                    describe(&value)
                ),
            )),
            scalar => Ok(RequestId(scalar)),
        }
    }

    /// The id as a JSON value (always a scalar).
    pub fn value(&self) -> &Value {
        &self.0
    }

    /// The id as a JSON value (always a scalar).
    pub fn into_value(self) -> Value {
        self.0
    }
}

impl From<u64> for RequestId {
    fn from(n: u64) -> RequestId {
        RequestId(Value::from(n))
    }
}

impl From<i64> for RequestId {
    fn from(n: i64) -> RequestId {
        RequestId(Value::from(n))
    }
}

impl From<bool> for RequestId {
    fn from(b: bool) -> RequestId {
        RequestId(Value::Bool(b))
    }
}

impl From<&str> for RequestId {
    fn from(text: &str) -> RequestId {
        RequestId(Value::String(text.to_string()))
    }
}

impl From<String> for RequestId {
    fn from(text: String) -> RequestId {
        RequestId(Value::String(text))
    }
}

/// The id as the JSON text it is sent as, e.g. `"abc"` (with quotes) or `7`; for logs.
impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&json(&self.0))
    }
}

/// The on-disk format of an encrypted file (`format` in requests; the offline client's
/// `--format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// RCRYPT v1: authenticated. The default.
    Ringcrypt,
    /// `openssl enc -aes-256-cbc -pbkdf2`: unauthenticated, for legacy archives.
    Openssl,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Ringcrypt => "ringcrypt",
            Format::Openssl => "openssl",
        }
    }
}

/// The file operations: the three that write an output, and `verify`, which reads only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileOp {
    Encrypt,
    Decrypt,
    Rewrap,
    /// Every record's tag of a sealed file checked; nothing written. Its spec's `output` is
    /// its `input` (it names no output).
    Verify,
}

impl FileOp {
    pub const ALL: [FileOp; 4] = [
        FileOp::Encrypt,
        FileOp::Decrypt,
        FileOp::Rewrap,
        FileOp::Verify,
    ];

    /// The op as it appears on the wire: `encrypt`, `decrypt`, `rewrap` or `verify`.
    pub fn as_str(self) -> &'static str {
        match self {
            FileOp::Encrypt => "encrypt",
            FileOp::Decrypt => "decrypt",
            FileOp::Rewrap => "rewrap",
            FileOp::Verify => "verify",
        }
    }

    /// Whether the op writes an output (every op but `verify`).
    pub fn writes(self) -> bool {
        self != FileOp::Verify
    }

    /// Parses a wire op name.
    pub fn parse(text: &str) -> Option<FileOp> {
        FileOp::ALL.into_iter().find(|op| op.as_str() == text)
    }
}

impl fmt::Display for FileOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An `encrypt`, `decrypt` or `rewrap` request, parsed: paths absolute and normalized, every
/// default filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileJobSpec {
    pub op: FileOp,
    /// Absolute, lexically normalized (no `.` or `..`, no repeated or trailing `/`).
    pub input: PathBuf,
    /// Same rules as `input`.
    pub output: PathBuf,
    /// encrypt: the key to seal under (default: the ring's default). decrypt and rewrap: the
    /// passphrase entry for openssl-format inputs.
    pub key: Option<String>,
    /// encrypt only; always `Ringcrypt` for decrypt and rewrap (the parser refuses the field
    /// on them).
    pub format: Format,
    pub recursive: bool,
    pub overwrite: bool,
    pub skip_existing: bool,
    pub wait: bool,
    /// The input and the output arrive as descriptors passed with the request line
    /// (`SCM_RIGHTS`), not as paths the daemon opens: `input` and `output` are then only the
    /// caller's names for them, used in messages and the audit log.
    pub fds: bool,
    /// A tree split over several runs (`"partition": "I/N"`, docs/fleet.md): this run
    /// takes only the entries of partition I. Trees only.
    pub partition: Option<crate::tree_rules::Partition>,
    /// Send `progress` lines for a single file too (trees always send them). Not part of
    /// [`FileJobSpec::same_work`]: like `wait`, it is about the answer, not the work.
    pub progress: bool,
    /// Who asked, as the kernel reported it for the connection (never on the wire): set by
    /// the daemon, which runs the job's path ops with these credentials unless the caller
    /// is root or the daemon's own uid, and merges only requests of the same caller.
    pub caller: Option<std::sync::Arc<crate::daemon::creds::Caller>>,
    /// A file of a tree: its level's input and output directories, held open by the tree
    /// (never on the wire). The job opens the input's name in the one and links the output's
    /// name in the other, instead of resolving the full paths again.
    pub held_dirs: Option<crate::daemon::held_dirs::HeldDirs>,
}

impl FileJobSpec {
    /// A spec with every optional field at its wire default.
    pub fn new(op: FileOp, input: PathBuf, output: PathBuf) -> FileJobSpec {
        FileJobSpec {
            op,
            input,
            output,
            key: None,
            format: Format::Ringcrypt,
            recursive: false,
            overwrite: false,
            skip_existing: false,
            wait: true,
            fds: false,
            partition: None,
            progress: false,
            caller: None,
            held_dirs: None,
        }
    }

    /// Whether `other` asks for exactly the same work with the same verdict: a request
    /// for it may attach to a job running `self` instead of running again. Every field that
    /// changes the output or the answer counts; `wait` (whether to answer) does not.
    pub fn same_work(&self, other: &FileJobSpec) -> bool {
        self.op == other.op
            && self.input == other.input
            && self.output == other.output
            && self.key == other.key
            && self.format == other.format
            && self.recursive == other.recursive
            && self.overwrite == other.overwrite
            && self.skip_existing == other.skip_existing
            && self.fds == other.fds
            && self.partition == other.partition
            && self.caller == other.caller
    }
}

/// A batch: many files in one request (`inputs`, and `outputs` unless it verifies), run as
/// one job the way a tree's files are, each file answered by its own `file` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchSpec {
    /// The options every file shares. Its `input` and `output` are the first file's, which
    /// stand for the batch in its status and its audit record.
    pub spec: FileJobSpec,
    /// Absolute and normalized, as a single file's paths; at least one.
    pub inputs: Vec<PathBuf>,
    /// One per input (for `verify`, the inputs again: nothing is written).
    pub outputs: Vec<PathBuf>,
}

/// One parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Ping,
    File(FileJobSpec),
    Batch(Box<BatchSpec>),
    Status { job: JobId },
    Cancel { job: JobId },
    Jobs,
    Stats,
    Keys,
    Reload,
}

impl Request {
    /// The wire op name, e.g. for logs and metric labels.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::File(spec) => spec.op.as_str(),
            Request::Batch(batch) => batch.spec.op.as_str(),
            Request::Status { .. } => "status",
            Request::Cancel { .. } => "cancel",
            Request::Jobs => "jobs",
            Request::Stats => "stats",
            Request::Keys => "keys",
            Request::Reload => "reload",
        }
    }
}

/// Every op name, in the order docs/protocol.md lists them; quoted in `unknown_op` messages.
const OPS: [&str; 11] = [
    "ping", "encrypt", "decrypt", "rewrap", "verify", "status", "cancel", "jobs", "stats", "keys",
    "reload",
];

/// A job id names its owner shard: wire form `"<shard>-<seq>"`, e.g. `"1-42"`, both decimal
/// without leading zeros, so every id has exactly one spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct JobId {
    pub shard: u32,
    pub seq: u64,
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.shard, self.seq)
    }
}

impl FromStr for JobId {
    type Err = Error;

    /// Parses `"<shard>-<seq>"`; anything else is `bad_request`.
    fn from_str(text: &str) -> Result<JobId, Error> {
        let invalid = || {
            Error::new(
                Code::BadRequest,
                format!(
                    "{} is not a job id; a job id looks like \"1-42\" (shard-sequence), \
                     as the accepted reply or the jobs list gave it",
                    quote(text)
                ),
            )
        };
        let (shard, seq) = text.split_once('-').ok_or_else(invalid)?;
        Ok(JobId {
            shard: decimal(shard).ok_or_else(invalid)?,
            seq: decimal(seq).ok_or_else(invalid)?,
        })
    }
}

/// A canonical decimal: ASCII digits only (`u64::from_str` would also take a `+`), no
/// leading zero unless the number is 0, no overflow.
fn decimal<T: FromStr>(digits: &str) -> Option<T> {
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if canonical { digits.parse().ok() } else { None }
}

impl Serialize for JobId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<JobId, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse()
            .map_err(|err: Error| de::Error::custom(err.message))
    }
}

/// The JSON type of a value, for messages: "a number", "an array", ...
fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A client-chosen string quoted for a message, cut at [`MAX_QUOTED_CHARS`] characters.
fn quote(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED_CHARS) {
        None => format!("{text:?}"),
        Some((cut, _)) => format!("{:?}...", &text[..cut]),
    }
}

// ---------------------------------------------------------------------------------------
// What replies carry: the daemon fills these in, `reply` writes them.

/// What a finished file job did, for its `done` reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DoneReport {
    pub job: JobId,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub micros: u64,
    pub files_ok: u64,
    pub files_failed: u64,
    pub files_skipped: u64,
    /// May hold more than [`MAX_FAILURES_REPORTED`]; the reply lists the first ones.
    pub failures: Vec<Failure>,
    /// Entries of a tree that were not files to process (symlinks, FIFOs, sockets,
    /// devices, outputs that already exist and verify), with the reason; the reply lists
    /// the first [`MAX_FAILURES_REPORTED`].
    pub skipped: Vec<Skipped>,
}

/// One entry of a tree job that was skipped, and why; also an entry of the `skipped` list the
/// client reads back from a `done` line ([`Done`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// One file of a job that failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub path: PathBuf,
    pub code: Code,
    pub message: String,
}

/// A running job's progress, for its `progress` reply; also what the client reads back from
/// one ([`ReplyLine::Progress`]: a count the line leaves out reads as zero).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Progress {
    pub job: JobId,
    #[serde(default)]
    pub files_done: u64,
    #[serde(default)]
    pub files_total: u64,
    #[serde(default)]
    pub bytes_done: u64,
    #[serde(default)]
    pub bytes_total: u64,
    #[serde(default)]
    pub rate_bytes_per_sec: u64,
    /// False while a tree is still being walked: the totals may still grow.
    #[serde(default)]
    pub totals_final: bool,
}

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 5] = [
        JobState::Queued,
        JobState::Running,
        JobState::Done,
        JobState::Failed,
        JobState::Cancelled,
    ];

    /// The state as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Parses a wire state.
    pub fn parse(text: &str) -> Option<JobState> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One job as `status` and `jobs` show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobInfo {
    pub job: JobId,
    pub op: FileOp,
    pub input: PathBuf,
    pub output: PathBuf,
    pub state: JobState,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Why a `failed` (or `cancelled`) job ended: the code and message its final `error`
    /// line carried, kept with the record so `status` says it after the fact.
    pub error: Option<Error>,
}

/// One shard's counters, for `stats`; also what the client reads back from one
/// ([`ReplyLine::Stats`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ShardStats {
    pub shard: u32,
    pub queued: u64,
    pub running: u64,
    pub jobs_done: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// One key as `keys` shows it: never key bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    pub name: String,
    /// 32 hex digits for ringcrypt keys; `None` for passphrases.
    pub id: Option<String>,
    /// `ringcrypt` or `openssl`.
    pub kind: &'static str,
    /// `active`, `decrypt-only` or `retired`.
    pub state: &'static str,
}
