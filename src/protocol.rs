//! The socket protocol (DESIGN §5): the JSON-lines wire format between `ringcrypt` and
//! `ringcryptd`, in one place. This module owns request parsing (with its limits), reply
//! encoding, and the client's halves of both ([`encode_request`], [`parse_reply`]).
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
//! | `encrypt` | `input`, `output`, `key?`, `format?` = `"ringcrypt"`, `recursive?` = false, `overwrite?` = false, `skip_existing?` = false, `wait?` = true, `fds?` = false | `accepted`, then `progress`* (recursive jobs), then `done` or `error` |
//! | `decrypt` | `input`, `output`, `key?`, `recursive?`, `overwrite?`, `skip_existing?`, `wait?`, `fds?` | same |
//! | `rewrap` | `input`, `output`, `key?`, `recursive?`, `overwrite?`, `skip_existing?`, `wait?`, `fds?` | same |
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
//! | `done` | `job`, `bytes_in`, `bytes_out`, `micros`, `files_ok`, `files_failed`, `files_skipped`, `failures` (array of `{path, code, message}`, at most [`MAX_FAILURES_REPORTED`]), and `failures_omitted` (integer) only when more files failed than are listed |
//! | `status` | `job`, `state` (`queued`, `running`, `done`, `failed` or `cancelled`), `progress` (`{bytes_done, bytes_total}`), `op`, `input`, `output` |
//! | `cancelled` | `job` |
//! | `jobs` | `jobs`: array of `{job, op, input, output, state, progress}` as in `status` |
//! | `stats` | `shards`: array of `{shard, queued, running, jobs_done, bytes_in, bytes_out}` |
//! | `keys` | `default` (string or null), `keys`: array of `{name, id, kind, state}`; `id` is 32 hex digits or null (passphrases have none), `kind` is `ringcrypt` or `openssl`, `state` is `active`, `decrypt-only` or `retired` |
//! | `reloaded` | `keys` (integer: how many keys the new ring holds) |
//! | `error` | `code`, `message` (names the file and the cause in words a person can act on) |
//!
//! A file job's replies end with exactly one `done` or `error` line. A `done` job may still
//! have failed files (`files_failed` > 0) in a recursive job; a single-file job that fails
//! ends with `error`.
//!
//! ## Error codes
//!
//! `bad_request` (malformed request), `unknown_op`, `too_large` (request line over the
//! limit), `not_found`, `permission_denied`, `forbidden_path` (outside the allowed roots, or
//! through a symlink), `exists` (output exists, no `overwrite`), `auth_failed` (tampered,
//! truncated or wrong-key ciphertext), `unknown_key`, `key_retired`, `bad_format` (not a
//! ringcrypt or openssl file), `busy` (queues full, try again), `timeout`, `cancelled`,
//! `io_error`, `no_space`, `shutting_down`, `internal`.
//!
//! **This list may grow**: ops, fields, reply types and error codes may be added, never
//! renamed or given a new meaning. Clients must ignore reply fields and reply types they do not
//! know, and treat an error code they do not know as a failure.

#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::error::{Code, Error};
use crate::offline::Format;

/// Longest request line accepted, newline excluded (DESIGN §5): 64 KiB. A request is a few
/// hundred bytes (two paths and some flags); the bound lets a connection's read buffer be
/// fixed in size and keeps one client from making the daemon buffer without limit.
pub const MAX_REQUEST_LINE_BYTES: usize = 64 * 1024;

/// Most failures listed in one `done` reply (DESIGN §5). A tree job can fail on millions of
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

/// The three file operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileOp {
    Encrypt,
    Decrypt,
    Rewrap,
}

impl FileOp {
    pub const ALL: [FileOp; 3] = [FileOp::Encrypt, FileOp::Decrypt, FileOp::Rewrap];

    /// The op as it appears on the wire: `encrypt`, `decrypt` or `rewrap`.
    pub fn as_str(self) -> &'static str {
        match self {
            FileOp::Encrypt => "encrypt",
            FileOp::Decrypt => "decrypt",
            FileOp::Rewrap => "rewrap",
        }
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
    /// Who asked, as the kernel reported it for the connection (never on the wire): set by
    /// the daemon, which runs the job's path ops with these credentials unless the caller
    /// is root or the daemon's own uid, and merges only requests of the same caller.
    pub caller: Option<std::sync::Arc<crate::creds::Caller>>,
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
            caller: None,
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
            && self.caller == other.caller
    }
}

/// One parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Ping,
    File(FileJobSpec),
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
            Request::Status { .. } => "status",
            Request::Cancel { .. } => "cancel",
            Request::Jobs => "jobs",
            Request::Stats => "stats",
            Request::Keys => "keys",
            Request::Reload => "reload",
        }
    }
}

/// Every op name, in the order DESIGN §5 lists them; quoted in `unknown_op` messages.
const OPS: [&str; 10] = [
    "ping", "encrypt", "decrypt", "rewrap", "status", "cancel", "jobs", "stats", "keys", "reload",
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

/// One parsed line: the id (if one could be read, even when the rest is bad, so the error
/// reply echoes it) and the request or the error to send back.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    pub id: Option<RequestId>,
    pub request: Result<Request, Error>,
}

/// Spare path buffers for request paths to be written into, so a request's paths reuse the
/// memory of paths whose jobs ended instead of costing an allocation each. The daemon keeps
/// one per shard (see `shard`); [`parse_request`] uses an empty one.
///
/// Bounded twice: at most `bound` spares are kept (a spare given back to a full pool is
/// dropped), and a spare holding more than [`SPARE_PATH_MAX_BYTES`] is dropped rather than
/// kept, so a rare long path cannot pin its memory for good.
#[derive(Debug, Default)]
pub struct SparePaths {
    spares: Vec<PathBuf>,
    bound: usize,
}

/// Most bytes a spare path may hold and still be kept: `PATH_MAX`, what the longest request
/// path ([`MAX_PATH_BYTES`] and its NUL) needs. Tree jobs may join longer paths; their
/// buffers are freed when their jobs end, not kept.
pub const SPARE_PATH_MAX_BYTES: usize = MAX_PATH_BYTES + 1;

impl SparePaths {
    /// A pool that keeps up to `bound` spares, its room allocated now, once.
    pub fn with_bound(bound: usize) -> SparePaths {
        SparePaths {
            spares: Vec::with_capacity(bound),
            bound,
        }
    }

    /// An empty path with room for at least `bytes` bytes: a spare if one is left (grown
    /// first if it is too small), else a new path.
    ///
    /// A path that must grow gets the next power of two of `bytes`, so the buffers of
    /// similar paths (names that differ by a digit, a suffix) fit each other and a spare
    /// grows once while the daemon warms up, not again for every slightly longer name.
    pub fn take(&mut self, bytes: usize) -> PathBuf {
        let mut path = self.spares.pop().unwrap_or_default();
        let text = path.as_mut_os_string();
        text.clear();
        if text.capacity() < bytes {
            text.reserve_exact(bytes.next_power_of_two());
        }
        path
    }

    /// Keeps `path` as a spare, or drops it when the pool is full or the path is too large
    /// to keep (see [`SparePaths`]).
    pub fn give(&mut self, path: PathBuf) {
        if self.spares.len() < self.bound && path.capacity() <= SPARE_PATH_MAX_BYTES {
            self.spares.push(path);
        }
    }

    /// Spares kept now.
    pub fn len(&self) -> usize {
        self.spares.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spares.is_empty()
    }
}

/// Parses one request line (without its newline). Never panics on any input.
///
/// The checks run in this order, and the first failure is the answer: length (`too_large`,
/// no id), UTF-8 and JSON syntax (`bad_request`, no id), a JSON object (`bad_request`, no
/// id), `id` (`bad_request`, no id when `id` itself is bad), duplicate fields, `op`
/// (`bad_request`, or `unknown_op`), then the op's fields (`bad_request`).
pub fn parse_request(line: &[u8]) -> Parsed {
    parse_request_reusing(line, &mut SparePaths::default())
}

/// [`parse_request`], writing a file request's `input` and `output` into spares taken from
/// `spares` (allocating only when it runs out). A request refused after its paths were
/// written gives them back. Same answers as [`parse_request`] for every line.
pub fn parse_request_reusing(line: &[u8], spares: &mut SparePaths) -> Parsed {
    let failed = |id: Option<RequestId>, err: Error| Parsed {
        id,
        request: Err(err),
    };
    if line.len() > MAX_REQUEST_LINE_BYTES {
        return failed(
            None,
            Error::new(
                Code::TooLarge,
                format!(
                    "the request line is {} bytes; the limit is {MAX_REQUEST_LINE_BYTES} \
                     bytes (64 KiB)",
                    line.len()
                ),
            ),
        );
    }
    let text = match std::str::from_utf8(line) {
        Ok(text) => text,
        Err(err) => {
            return failed(
                None,
                bad(format!(
                    "the request is not valid JSON: it is not UTF-8 (bad byte at offset {})",
                    err.valid_up_to()
                )),
            );
        }
    };
    let mut fields = match serde_json::from_str::<TopLevel>(text) {
        Ok(TopLevel::Object(fields)) => fields,
        Ok(TopLevel::Other(what)) => {
            return failed(
                None,
                bad(format!(
                    "the request is {what}, not a JSON object; send one object per line, \
                     like {{\"op\":\"ping\"}}"
                )),
            );
        }
        Err(err) => {
            return failed(
                None,
                bad(format!(
                    "the request is not valid JSON: {err}; send one JSON object per line"
                )),
            );
        }
    };

    if fields.duplicate.as_deref() == Some("id") {
        return failed(
            None,
            bad("field \"id\" appears more than once; give it once"),
        );
    }
    let id = match fields
        .take(Field::Id)
        .map(|value| RequestId::new(value.into_value()))
    {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(err)) => return failed(None, err),
    };
    if let Some(name) = fields.duplicate.take() {
        return failed(
            id,
            bad(format!(
                "field {} appears more than once; give it once",
                quote(&name)
            )),
        );
    }
    let request = parse_op(fields, spares);
    Parsed { id, request }
}

/// Every field name some request defines. A request's fields are parsed into a slot per
/// name (no map, no owned names); other names are kept only to be refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Id,
    Op,
    Input,
    Output,
    Key,
    Format,
    Recursive,
    Overwrite,
    SkipExisting,
    Wait,
    Fds,
    Job,
}

impl Field {
    const ALL: [Field; 12] = [
        Field::Id,
        Field::Op,
        Field::Input,
        Field::Output,
        Field::Key,
        Field::Format,
        Field::Recursive,
        Field::Overwrite,
        Field::SkipExisting,
        Field::Wait,
        Field::Fds,
        Field::Job,
    ];

    fn name(self) -> &'static str {
        match self {
            Field::Id => "id",
            Field::Op => "op",
            Field::Input => "input",
            Field::Output => "output",
            Field::Key => "key",
            Field::Format => "format",
            Field::Recursive => "recursive",
            Field::Overwrite => "overwrite",
            Field::SkipExisting => "skip_existing",
            Field::Wait => "wait",
            Field::Fds => "fds",
            Field::Job => "job",
        }
    }

    fn parse(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|field| field.name() == name)
    }
}

/// A field's value as parsed: strings borrowed from the line unless they hold escapes,
/// numbers as serde_json reads them, and arrays and objects only as what they are (no request
/// field takes one, so their contents are checked for syntax and dropped).
enum Val<'de> {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    Str(Cow<'de, str>),
    Array,
    Object,
}

impl Val<'_> {
    /// The JSON type, for messages: "a number", "an array", ...
    fn describe(&self) -> &'static str {
        match self {
            Val::Null => "null",
            Val::Bool(_) => "a boolean",
            Val::Number(_) => "a number",
            Val::Str(_) => "a string",
            Val::Array => "an array",
            Val::Object => "an object",
        }
    }

    /// The value as a `Value` (arrays and objects empty: they are refused wherever they
    /// appear, by type).
    fn into_value(self) -> Value {
        match self {
            Val::Null => Value::Null,
            Val::Bool(flag) => Value::Bool(flag),
            Val::Number(number) => Value::Number(number),
            Val::Str(text) => Value::String(text.into_owned()),
            Val::Array => Value::Array(Vec::new()),
            Val::Object => Value::Object(Map::new()),
        }
    }
}

impl<'de> Deserialize<'de> for Val<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Val<'de>, D::Error> {
        deserializer.deserialize_any(ValVisitor)
    }
}

struct ValVisitor;

impl<'de> Visitor<'de> for ValVisitor {
    type Value = Val<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E: de::Error>(self, flag: bool) -> Result<Val<'de>, E> {
        Ok(Val::Bool(flag))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Val<'de>, E> {
        Ok(Val::Number(n.into()))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Val<'de>, E> {
        Ok(Val::Number(n.into()))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Val<'de>, E> {
        // As serde_json's `Value` does: a float it cannot hold becomes null.
        Ok(serde_json::Number::from_f64(n).map_or(Val::Null, Val::Number))
    }

    fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Borrowed(text)))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Owned(text.to_owned())))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Owned(text)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Val<'de>, E> {
        Ok(Val::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Val<'de>, A::Error> {
        // Consume the elements so that serde_json still reports syntax errors inside them.
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Val::Array)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Val<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Val::Object)
    }
}

/// An object key, borrowed from the line unless it holds escapes.
struct Name<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Name<'de>, D::Error> {
        deserializer.deserialize_str(NameVisitor)
    }
}

struct NameVisitor;

impl<'de> Visitor<'de> for NameVisitor {
    type Value = Name<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Name<'de>, E> {
        Ok(Name(Cow::Borrowed(text)))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Name<'de>, E> {
        Ok(Name(Cow::Owned(text.to_owned())))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<Name<'de>, E> {
        Ok(Name(Cow::Owned(text)))
    }
}

/// A request object's fields: the first value of each known name, the names no request
/// defines (in order, repeats included), and the first name that appeared twice.
struct RawFields<'de> {
    values: [Option<Val<'de>>; Field::ALL.len()],
    unknown: Vec<Cow<'de, str>>,
    duplicate: Option<Cow<'de, str>>,
}

impl<'de> RawFields<'de> {
    /// Takes a field out, so later checks no longer see it.
    fn take(&mut self, field: Field) -> Option<Val<'de>> {
        self.values[field as usize].take()
    }

    fn contains(&self, field: Field) -> bool {
        self.values[field as usize].is_some()
    }

    /// Of the fields left, the first in byte order of its name that `allowed` does not
    /// hold.
    fn first_not_in<'s>(&'s self, allowed: &[&str]) -> Option<&'s str> {
        let known = Field::ALL
            .into_iter()
            .filter(|&field| self.contains(field))
            .map(|field| -> &'s str { field.name() });
        let unknown = self.unknown.iter().map(|name| -> &'s str { name });
        known
            .chain(unknown)
            .filter(|name| !allowed.contains(name))
            .min()
    }
}

/// The top level of a request line: an object's fields, or what else it was. Returned once
/// per line and taken apart at once, so the size of its larger variant costs a copy, not an
/// allocation.
#[allow(clippy::large_enum_variant)]
enum TopLevel<'de> {
    Object(RawFields<'de>),
    Other(&'static str),
}

impl<'de> Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<TopLevel<'de>, D::Error> {
        deserializer.deserialize_any(TopLevelVisitor)
    }
}

struct TopLevelVisitor;

impl<'de> Visitor<'de> for TopLevelVisitor {
    type Value = TopLevel<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevel<'de>, A::Error> {
        let mut fields = RawFields {
            values: Default::default(),
            unknown: Vec::new(),
            duplicate: None,
        };
        while let Some((Name(name), value)) = map.next_entry::<Name, Val>()? {
            let seen = match Field::parse(&name) {
                Some(field) => {
                    let slot = &mut fields.values[field as usize];
                    let seen = slot.is_some();
                    if !seen {
                        *slot = Some(value);
                    }
                    seen
                }
                None => fields.unknown.contains(&name),
            };
            if seen {
                fields.duplicate.get_or_insert(name);
            } else if Field::parse(&name).is_none() {
                fields.unknown.push(name);
            }
        }
        Ok(TopLevel::Object(fields))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TopLevel<'de>, A::Error> {
        // Consume the elements so that serde_json still reports syntax errors inside them.
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(TopLevel::Other("an array"))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<TopLevel<'de>, E> {
        Ok(TopLevel::Other("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<TopLevel<'de>, E> {
        Ok(TopLevel::Other("a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<TopLevel<'de>, E> {
        Ok(TopLevel::Other("a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<TopLevel<'de>, E> {
        Ok(TopLevel::Other("a number"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<TopLevel<'de>, E> {
        Ok(TopLevel::Other("a string"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<TopLevel<'de>, E> {
        Ok(TopLevel::Other("null"))
    }
}

/// Parses `op` and the op's own fields (`id` already taken out).
fn parse_op(mut fields: RawFields, spares: &mut SparePaths) -> Result<Request, Error> {
    let op = match fields.take(Field::Op) {
        Some(Val::Str(op)) => op,
        Some(other) => {
            return Err(bad(format!(
                "field \"op\" must be a string naming the operation, not {}",
                other.describe()
            )));
        }
        None => {
            return Err(bad(format!(
                "the request has no \"op\" field; give one of: {}",
                OPS.join(", ")
            )));
        }
    };
    let mut fields = Fields { op: &op, fields };
    if let Some(file_op) = FileOp::parse(&op) {
        return parse_file_job(file_op, &mut fields, spares).map(Request::File);
    }
    match op.as_ref() {
        "ping" => fields.only(&[]).map(|()| Request::Ping),
        "status" => {
            fields.only(&["job"])?;
            Ok(Request::Status {
                job: fields.job(Field::Job)?,
            })
        }
        "cancel" => {
            fields.only(&["job"])?;
            Ok(Request::Cancel {
                job: fields.job(Field::Job)?,
            })
        }
        "jobs" => fields.only(&[]).map(|()| Request::Jobs),
        "stats" => fields.only(&[]).map(|()| Request::Stats),
        "keys" => fields.only(&[]).map(|()| Request::Keys),
        "reload" => fields.only(&[]).map(|()| Request::Reload),
        _ => Err(Error::new(
            Code::UnknownOp,
            format!("unknown op {}; the ops are: {}", quote(&op), OPS.join(", ")),
        )),
    }
}

/// The fields of `encrypt`, `decrypt` and `rewrap`, besides `op` and `id`.
const FILE_FIELDS: [&str; 9] = [
    "input",
    "output",
    "key",
    "format",
    "recursive",
    "overwrite",
    "skip_existing",
    "wait",
    "fds",
];

fn parse_file_job(
    op: FileOp,
    fields: &mut Fields,
    spares: &mut SparePaths,
) -> Result<FileJobSpec, Error> {
    if op != FileOp::Encrypt && fields.fields.contains(Field::Format) {
        return Err(bad(format!(
            "field \"format\" applies to encrypt only; {op} reads the format from the input \
             file, so leave the field out"
        )));
    }
    fields.only(&FILE_FIELDS)?;
    let input = fields.path(Field::Input, spares)?;
    let output = match fields.path(Field::Output, spares) {
        Ok(output) => output,
        Err(err) => {
            spares.give(input);
            return Err(err);
        }
    };
    let mut spec = FileJobSpec::new(op, input, output);
    match file_options(&mut spec, fields) {
        Ok(()) => Ok(spec),
        Err(err) => {
            // The paths were good; their buffers serve the next request.
            spares.give(spec.input);
            spares.give(spec.output);
            Err(err)
        }
    }
}

/// The file-job fields after the paths, checked in wire order, into `spec`.
fn file_options(spec: &mut FileJobSpec, fields: &mut Fields) -> Result<(), Error> {
    let key = fields.key(Field::Key)?;
    let format = match fields.optional(Field::Format, "\"ringcrypt\" or \"openssl\"")? {
        None => Format::Ringcrypt,
        Some(Val::Str(name)) if name == "ringcrypt" => Format::Ringcrypt,
        Some(Val::Str(name)) if name == "openssl" => Format::Openssl,
        Some(other) => {
            let got = match &other {
                Val::Str(text) => quote(text),
                other => other.describe().to_string(),
            };
            return Err(bad(format!(
                "field \"format\" must be \"ringcrypt\" or \"openssl\", not {got}"
            )));
        }
    };
    let recursive = fields.flag(Field::Recursive, false)?;
    let overwrite = fields.flag(Field::Overwrite, false)?;
    let skip_existing = fields.flag(Field::SkipExisting, false)?;
    let wait = fields.flag(Field::Wait, true)?;
    let fds = fields.flag(Field::Fds, false)?;
    if fds && (recursive || skip_existing) {
        return Err(bad(
            "field \"fds\" is for single files: a tree (\"recursive\") is walked by the \
             daemon from its path, and \"skip_existing\" needs the output's name, so send \
             those jobs by path",
        ));
    }
    if overwrite && skip_existing {
        return Err(bad(
            "fields \"overwrite\" and \"skip_existing\" are both true; an existing output can \
             be replaced or skipped, not both, so give at most one",
        ));
    }
    spec.key = key;
    spec.format = format;
    spec.recursive = recursive;
    spec.overwrite = overwrite;
    spec.skip_existing = skip_existing;
    spec.wait = wait;
    spec.fds = fds;
    Ok(())
}

/// A request's fields while they are being taken apart, with the op for messages.
struct Fields<'a, 'de> {
    op: &'a str,
    fields: RawFields<'de>,
}

impl<'de> Fields<'_, 'de> {
    /// Refuses any field not in `allowed` (`op` and `id` are already gone), so a typo is an
    /// error rather than an option silently not taken.
    fn only(&self, allowed: &[&str]) -> Result<(), Error> {
        let Some(unknown) = self.fields.first_not_in(allowed) else {
            return Ok(());
        };
        let known = if allowed.is_empty() {
            format!("{} takes no fields besides \"op\" and \"id\"", self.op)
        } else {
            format!(
                "{} takes \"op\", \"id\", {}",
                self.op,
                allowed
                    .iter()
                    .map(|name| format!("\"{name}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        Err(bad(format!("unknown field {}; {known}", quote(unknown))))
    }

    /// Takes a field that must be present; `expected` says what it should hold.
    fn required(&mut self, field: Field, expected: &str) -> Result<Val<'de>, Error> {
        self.fields.take(field).ok_or_else(|| {
            bad(format!(
                "the {} request needs field \"{}\" ({expected})",
                self.op,
                field.name()
            ))
        })
    }

    /// Takes a field that may be left out; `null` is refused, since leaving the field out
    /// is how a request asks for the default.
    fn optional(&mut self, field: Field, expected: &str) -> Result<Option<Val<'de>>, Error> {
        match self.fields.take(field) {
            Some(Val::Null) => Err(bad(format!(
                "field \"{}\" must be {expected}, not null; leave the field out for the \
                 default",
                field.name()
            ))),
            value => Ok(value),
        }
    }

    fn path(&mut self, field: Field, spares: &mut SparePaths) -> Result<PathBuf, Error> {
        const EXPECTED: &str = "a string: an absolute path";
        match self.required(field, EXPECTED)? {
            Val::Str(text) => {
                // The normalized path is never longer than the text it came from.
                let mut path = spares.take(text.len());
                match normalize_path(field.name(), &text, &mut path) {
                    Ok(()) => Ok(path),
                    Err(err) => {
                        spares.give(path);
                        Err(err)
                    }
                }
            }
            other => Err(mistyped(field.name(), EXPECTED, &other)),
        }
    }

    fn key(&mut self, field: Field) -> Result<Option<String>, Error> {
        const EXPECTED: &str = "a string naming a key in the key ring";
        let name = field.name();
        let key = match self.optional(field, EXPECTED)? {
            None => return Ok(None),
            Some(Val::Str(key)) => key,
            Some(other) => return Err(mistyped(name, EXPECTED, &other)),
        };
        if key.is_empty() || key.len() > MAX_KEY_NAME_BYTES {
            return Err(bad(format!(
                "field \"{name}\" is {} bytes long; a key name is 1 to \
                 {MAX_KEY_NAME_BYTES} bytes",
                key.len()
            )));
        }
        if key.chars().any(char::is_control) {
            return Err(bad(format!(
                "field \"{name}\" ({}) contains control characters, which no key name holds",
                quote(&key)
            )));
        }
        Ok(Some(key.into_owned()))
    }

    fn flag(&mut self, field: Field, default: bool) -> Result<bool, Error> {
        const EXPECTED: &str = "true or false";
        match self.optional(field, EXPECTED)? {
            None => Ok(default),
            Some(Val::Bool(flag)) => Ok(flag),
            Some(other) => Err(mistyped(field.name(), EXPECTED, &other)),
        }
    }

    fn job(&mut self, field: Field) -> Result<JobId, Error> {
        const EXPECTED: &str = "a string: a job id like \"1-42\"";
        let name = field.name();
        match self.required(field, EXPECTED)? {
            Val::Str(text) => text
                .parse()
                .map_err(|err: Error| err.context(format!("field \"{name}\""))),
            other => Err(mistyped(name, EXPECTED, &other)),
        }
    }
}

/// Checks and normalizes a request path, lexically (no file system access).
///
/// `..` is refused rather than resolved: dropping `a/..` lexically is only right when `a` is
/// not a symlink, and this module cannot know. The daemon resolves paths beneath its allowed
/// roots with `openat2(RESOLVE_BENEATH)` and never follows `..` out of them, so a path with
/// `..` is either an escape attempt or a question the client should settle on its side.
///
/// The result is written into `path`, which must be empty; its buffer is reused, so a spare
/// with room enough makes this allocation-free.
fn normalize_path(field: &str, text: &str, path: &mut PathBuf) -> Result<(), Error> {
    if text.is_empty() {
        return Err(bad(format!(
            "field \"{field}\" is empty; give an absolute path"
        )));
    }
    if text.contains('\0') {
        return Err(bad(format!(
            "field \"{field}\" contains a NUL byte, which no file name can hold"
        )));
    }
    if !text.starts_with('/') {
        return Err(bad(format!(
            "field \"{field}\" is a relative path ({}); paths must be absolute. The ringcrypt \
             client resolves relative paths against its working directory before sending",
            quote(text)
        )));
    }
    let normalized = path.as_mut_os_string();
    debug_assert!(normalized.is_empty(), "normalized into an empty path");
    for component in text.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                return Err(bad(format!(
                    "field \"{field}\" ({}) contains \"..\"; give the path without it (the \
                     daemon does not resolve \"..\", because a directory before it may be a \
                     symlink, and it resolves paths only beneath its allowed roots)",
                    quote(text)
                )));
            }
            name => {
                normalized.push("/");
                normalized.push(name);
            }
        }
    }
    if normalized.is_empty() {
        normalized.push("/");
    }
    if normalized.len() > MAX_PATH_BYTES {
        return Err(bad(format!(
            "field \"{field}\" is a path of {} bytes; the limit is {MAX_PATH_BYTES} bytes \
             (PATH_MAX)",
            normalized.len()
        )));
    }
    Ok(())
}

fn bad(message: impl Into<String>) -> Error {
    Error::new(Code::BadRequest, message)
}

fn mistyped(name: &str, expected: &str, got: &Val) -> Error {
    bad(format!(
        "field \"{name}\" must be {expected}, not {}",
        got.describe()
    ))
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
// Replies.
//
// Every reply is encoded straight into a caller's byte buffer (a connection's output buffer
// on the daemon's side), so a reply costs no allocation of its own; the `String`-returning
// functions are the same encoders over a fresh buffer, for callers that want a line.

/// Writes a JSON object into a caller's buffer, with its fields in the order they are added
/// (serde_json's `Map` is sorted, and the wire promises `"type"` first). Keys are this
/// module's own names.
struct Obj<'a> {
    out: &'a mut Vec<u8>,
    empty: bool,
}

impl<'a> Obj<'a> {
    fn new(out: &'a mut Vec<u8>) -> Obj<'a> {
        out.push(b'{');
        Obj { out, empty: true }
    }

    /// A reply: `"type"` first, then `"id"` when the request had one.
    fn reply(out: &'a mut Vec<u8>, kind: &str, id: Option<&RequestId>) -> Obj<'a> {
        let mut obj = Obj::new(out);
        obj.str("type", kind);
        if let Some(id) = id {
            write_json(obj.key("id"), &id.0);
        }
        obj
    }

    /// Starts a field and returns the buffer for its value.
    fn key(&mut self, key: &str) -> &mut Vec<u8> {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        write_json(self.out, key);
        self.out.push(b':');
        self.out
    }

    /// Adds a field whose value is already JSON text.
    fn raw(&mut self, key: &str, value_json: &str) -> &mut Obj<'a> {
        self.key(key).extend_from_slice(value_json.as_bytes());
        self
    }

    fn str(&mut self, key: &str, value: &str) -> &mut Obj<'a> {
        write_json(self.key(key), value);
        self
    }

    fn opt_str(&mut self, key: &str, value: Option<&str>) -> &mut Obj<'a> {
        match value {
            Some(value) => self.str(key, value),
            None => self.raw(key, "null"),
        }
    }

    fn u64(&mut self, key: &str, value: u64) -> &mut Obj<'a> {
        write_u64(self.key(key), value);
        self
    }

    fn bool(&mut self, key: &str, value: bool) -> &mut Obj<'a> {
        self.raw(key, if value { "true" } else { "false" })
    }

    /// A path as a string; a name that is not UTF-8 is shown lossily (U+FFFD).
    fn path(&mut self, key: &str, value: &Path) -> &mut Obj<'a> {
        self.str(key, &value.to_string_lossy())
    }

    /// A job id as its string, `"<shard>-<seq>"`.
    fn job(&mut self, key: &str, job: JobId) -> &mut Obj<'a> {
        let out = self.key(key);
        out.push(b'"');
        write_u64(out, u64::from(job.shard));
        out.push(b'-');
        write_u64(out, job.seq);
        out.push(b'"');
        self
    }

    /// An array field whose elements `element` writes, each into the buffer it is given.
    fn array<T>(
        &mut self,
        key: &str,
        items: &[T],
        mut element: impl FnMut(&mut Vec<u8>, &T),
    ) -> &mut Obj<'a> {
        let out = self.key(key);
        out.push(b'[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            element(out, item);
        }
        out.push(b']');
        self
    }

    /// Closes the object, `{...}`.
    fn finish(&mut self) {
        self.out.push(b'}');
    }

    /// Closes the object and ends the line, `{...}\n`.
    fn line(&mut self) {
        self.out.extend_from_slice(b"}\n");
    }
}

/// Writes JSON text for a string, a scalar value or an object key.
fn write_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // serde_json fails only on maps with non-string keys, on `Serialize` impls that report
    // an error, and on writer errors; this module passes it strings and scalar `Value`s, which
    // do none of that, and writing into a `Vec` cannot fail.
    serde_json::to_writer(out, value).expect("strings and JSON scalars always serialize");
}

/// Writes an unsigned integer in decimal, as serde_json spells it.
fn write_u64(out: &mut Vec<u8>, value: u64) {
    use std::io::Write as _;
    // Formatting into a `Vec` cannot fail.
    write!(out, "{value}").expect("writing into a Vec cannot fail");
}

/// JSON text for a string, a scalar value or an object key.
fn json<T: Serialize + ?Sized>(value: &T) -> String {
    line_of(|out| write_json(out, value))
}

/// What `encode` writes, as a `String`.
fn line_of(encode: impl FnOnce(&mut Vec<u8>)) -> String {
    let mut out = Vec::new();
    encode(&mut out);
    // Every encoder here writes JSON text from `&str`s and serde_json's output: UTF-8.
    String::from_utf8(out).expect("JSON text is UTF-8")
}

/// `pong`: the daemon is alive.
pub fn pong(id: Option<&RequestId>, version: &str, shards: usize, backend: &str) -> String {
    line_of(|out| {
        Obj::reply(out, "pong", id)
            .str("version", version)
            .u64("shards", shards as u64)
            .str("backend", backend)
            .line()
    })
}

/// `accepted`: a file job was queued under `job`.
pub fn accepted(id: Option<&RequestId>, job: JobId) -> String {
    line_of(|out| write_accepted(out, id, job))
}

/// [`accepted`], written into `out`.
pub fn write_accepted(out: &mut Vec<u8>, id: Option<&RequestId>, job: JobId) {
    Obj::reply(out, "accepted", id).job("job", job).line();
}

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

/// One entry of a tree job that was skipped, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// `done`: the job finished (some files of a tree job may have failed). Lists at most
/// [`MAX_FAILURES_REPORTED`] failures; when there are more, `failures_omitted` counts the
/// rest (at least `files_failed` minus the listed ones).
pub fn done(id: Option<&RequestId>, report: &DoneReport) -> String {
    line_of(|out| write_done(out, id, report))
}

/// [`done`], written into `out`.
pub fn write_done(out: &mut Vec<u8>, id: Option<&RequestId>, report: &DoneReport) {
    let listed = report.failures.len().min(MAX_FAILURES_REPORTED);
    // The job may count failures it did not keep (its own list is bounded too), so the
    // omitted count is whichever says more.
    let omitted = (report.failures.len() as u64)
        .max(report.files_failed)
        .saturating_sub(listed as u64);
    let mut obj = Obj::reply(out, "done", id);
    obj.job("job", report.job)
        .u64("bytes_in", report.bytes_in)
        .u64("bytes_out", report.bytes_out)
        .u64("micros", report.micros)
        .u64("files_ok", report.files_ok)
        .u64("files_failed", report.files_failed)
        .u64("files_skipped", report.files_skipped)
        .array("failures", &report.failures[..listed], |out, failure| {
            Obj::new(out)
                .path("path", &failure.path)
                .str("code", failure.code.as_str())
                .str("message", &failure.message)
                .finish()
        });
    if omitted > 0 {
        obj.u64("failures_omitted", omitted);
    }
    let shown = report.skipped.len().min(MAX_FAILURES_REPORTED);
    obj.array("skipped", &report.skipped[..shown], |out, entry| {
        Obj::new(out)
            .path("path", &entry.path)
            .str("reason", &entry.reason)
            .finish()
    });
    let skipped_omitted = report
        .files_skipped
        .max(report.skipped.len() as u64)
        .saturating_sub(shown as u64);
    if skipped_omitted > 0 {
        obj.u64("skipped_omitted", skipped_omitted);
    }
    obj.line();
}

/// A running job's progress, for its `progress` reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    pub job: JobId,
    pub files_done: u64,
    pub files_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub rate_bytes_per_sec: u64,
    /// False while a tree is still being walked: the totals may still grow.
    pub totals_final: bool,
}

/// `progress`: sent during recursive jobs.
pub fn progress(id: Option<&RequestId>, p: &Progress) -> String {
    line_of(|out| write_progress(out, id, p))
}

/// [`progress`], written into `out`.
pub fn write_progress(out: &mut Vec<u8>, id: Option<&RequestId>, p: &Progress) {
    Obj::reply(out, "progress", id)
        .job("job", p.job)
        .u64("files_done", p.files_done)
        .u64("files_total", p.files_total)
        .u64("bytes_done", p.bytes_done)
        .u64("bytes_total", p.bytes_total)
        .u64("rate_bytes_per_sec", p.rate_bytes_per_sec)
        .bool("totals_final", p.totals_final)
        .line();
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
}

/// Writes the `progress` object of a `status` or `jobs` entry.
fn job_progress(out: &mut Vec<u8>, info: &JobInfo) {
    Obj::new(out)
        .u64("bytes_done", info.bytes_done)
        .u64("bytes_total", info.bytes_total)
        .finish();
}

/// `status`: one job's state and progress.
pub fn status(id: Option<&RequestId>, info: &JobInfo) -> String {
    line_of(|out| write_status(out, id, info))
}

/// [`status`], written into `out`.
pub fn write_status(out: &mut Vec<u8>, id: Option<&RequestId>, info: &JobInfo) {
    let mut obj = Obj::reply(out, "status", id);
    obj.job("job", info.job).str("state", info.state.as_str());
    job_progress(obj.key("progress"), info);
    obj.str("op", info.op.as_str())
        .path("input", &info.input)
        .path("output", &info.output)
        .line();
}

/// `cancelled`: the job was cancelled (its own `done`/`error` line, if anyone waits for it,
/// says `cancelled` too).
pub fn cancelled(id: Option<&RequestId>, job: JobId) -> String {
    line_of(|out| write_cancelled(out, id, job))
}

/// [`cancelled`], written into `out`.
pub fn write_cancelled(out: &mut Vec<u8>, id: Option<&RequestId>, job: JobId) {
    Obj::reply(out, "cancelled", id).job("job", job).line();
}

/// `jobs`: the jobs the daemon knows, as the caller lists them.
pub fn jobs(id: Option<&RequestId>, jobs: &[JobInfo]) -> String {
    line_of(|out| {
        Obj::reply(out, "jobs", id)
            .array("jobs", jobs, |out, info| {
                let mut obj = Obj::new(out);
                obj.job("job", info.job)
                    .str("op", info.op.as_str())
                    .path("input", &info.input)
                    .path("output", &info.output)
                    .str("state", info.state.as_str());
                job_progress(obj.key("progress"), info);
                obj.finish();
            })
            .line()
    })
}

/// One shard's counters, for `stats`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardStats {
    pub shard: u32,
    pub queued: u64,
    pub running: u64,
    pub jobs_done: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// `stats`: per-shard counters.
pub fn stats(id: Option<&RequestId>, shards: &[ShardStats]) -> String {
    line_of(|out| {
        Obj::reply(out, "stats", id)
            .array("shards", shards, |out, s| {
                Obj::new(out)
                    .u64("shard", u64::from(s.shard))
                    .u64("queued", s.queued)
                    .u64("running", s.running)
                    .u64("jobs_done", s.jobs_done)
                    .u64("bytes_in", s.bytes_in)
                    .u64("bytes_out", s.bytes_out)
                    .finish()
            })
            .line()
    })
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

/// `keys`: the key ring's names, ids, kinds and states.
pub fn keys(id: Option<&RequestId>, default: Option<&str>, keys: &[KeyInfo]) -> String {
    line_of(|out| {
        Obj::reply(out, "keys", id)
            .opt_str("default", default)
            .array("keys", keys, |out, key| {
                Obj::new(out)
                    .str("name", &key.name)
                    .opt_str("id", key.id.as_deref())
                    .str("kind", key.kind)
                    .str("state", key.state)
                    .finish()
            })
            .line()
    })
}

/// `reloaded`: the key ring was read again and now holds `keys` keys.
pub fn reloaded(id: Option<&RequestId>, keys: usize) -> String {
    line_of(|out| {
        Obj::reply(out, "reloaded", id)
            .u64("keys", keys as u64)
            .line()
    })
}

/// `error`: the request, or the job it started, failed.
pub fn error(id: Option<&RequestId>, err: &Error) -> String {
    line_of(|out| write_error(out, id, err))
}

/// [`error`], written into `out`.
pub fn write_error(out: &mut Vec<u8>, id: Option<&RequestId>, err: &Error) {
    Obj::reply(out, "error", id)
        .str("code", err.code.as_str())
        .str("message", &err.message)
        .line();
}

// ---------------------------------------------------------------------------------------
// The client's side.

/// Encodes a request as one line, with its newline. Fields at their default are left out, so
/// a request that does not use a newer field is understood by an older daemon.
///
/// Paths are sent as strings; one that is not UTF-8 is sent lossily (U+FFFD) and will not
/// name the file, so the client should refuse such paths before calling this.
pub fn encode_request(id: Option<&RequestId>, request: &Request) -> String {
    line_of(|out| {
        let mut obj = Obj::new(out);
        obj.str("op", request.op());
        if let Some(id) = id {
            write_json(obj.key("id"), &id.0);
        }
        match request {
            Request::File(spec) => {
                obj.path("input", &spec.input).path("output", &spec.output);
                if let Some(key) = &spec.key {
                    obj.str("key", key);
                }
                // Written when not the default, even on decrypt or rewrap, where the daemon
                // refuses it: a caller's mistake is reported rather than dropped.
                if spec.format != Format::Ringcrypt {
                    obj.str("format", spec.format.as_str());
                }
                if spec.recursive {
                    obj.bool("recursive", true);
                }
                if spec.overwrite {
                    obj.bool("overwrite", true);
                }
                if spec.skip_existing {
                    obj.bool("skip_existing", true);
                }
                if !spec.wait {
                    obj.bool("wait", false);
                }
                if spec.fds {
                    obj.bool("fds", true);
                }
            }
            Request::Status { job } | Request::Cancel { job } => {
                obj.job("job", *job);
            }
            Request::Ping | Request::Jobs | Request::Stats | Request::Keys | Request::Reload => {}
        }
        obj.line();
    })
}

/// One reply line as the client sees it: its type, its id, and the rest of its fields.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    /// The `"type"` field: `pong`, `accepted`, `done`, `error`, ...
    pub kind: String,
    /// The `"id"` field, if the reply has one.
    pub id: Option<Value>,
    /// Every other field.
    pub fields: Map<String, Value>,
}

impl Reply {
    /// Whether this reply answers the request sent with `id`.
    pub fn answers(&self, id: Option<&RequestId>) -> bool {
        self.id.as_ref() == id.map(RequestId::value)
    }

    /// The `job` field, if the reply has a valid one.
    pub fn job(&self) -> Option<JobId> {
        self.fields.get("job")?.as_str()?.parse().ok()
    }

    /// For an `error` reply, the error it carries. A code this client does not know (the
    /// list may grow) becomes `internal`, with the daemon's code kept in the message.
    pub fn error(&self) -> Option<Error> {
        if self.kind != "error" {
            return None;
        }
        let code_text = self
            .fields
            .get("code")
            .and_then(Value::as_str)
            .unwrap_or("");
        let message = self
            .fields
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("the daemon gave no message");
        Some(match Code::parse(code_text) {
            Some(code) => Error::new(code, message),
            None => Error::new(
                Code::Internal,
                format!("{message} (error code {})", quote(code_text)),
            ),
        })
    }
}

/// Parses one reply line (its newline may be left on). A line that is not a JSON object with
/// a string `"type"` is `internal`: the daemon never sends one, so something else is
/// listening on the socket or the daemon is broken.
pub fn parse_reply(line: &str) -> Result<Reply, Error> {
    let not_a_reply = |why: String| {
        Error::new(
            Code::Internal,
            format!("the reply from the socket {why}; is ringcryptd listening there?"),
        )
    };
    let value: Value = serde_json::from_str(line)
        .map_err(|err| not_a_reply(format!("is not valid JSON ({err})")))?;
    let Value::Object(mut fields) = value else {
        return Err(not_a_reply(format!(
            "is {}, not a JSON object",
            describe(&value)
        )));
    };
    let kind = match fields.remove("type") {
        Some(Value::String(kind)) => kind,
        _ => return Err(not_a_reply("has no \"type\" string".to_string())),
    };
    let id = fields.remove("id");
    Ok(Reply { kind, id, fields })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(line: &str) -> Parsed {
        parse_request(line.as_bytes())
    }

    fn ok(line: &str) -> Request {
        match parse(line).request {
            Ok(request) => request,
            Err(err) => panic!("{line}: {}", err.message),
        }
    }

    fn err(line: &str) -> Error {
        match parse(line).request {
            Ok(request) => panic!("{line}: parsed as {request:?}"),
            Err(err) => err,
        }
    }

    fn spec(op: FileOp, input: &str, output: &str) -> FileJobSpec {
        FileJobSpec::new(op, PathBuf::from(input), PathBuf::from(output))
    }

    /// Where a path's buffer lives: the same address means the same allocation.
    fn buffer_of(path: &Path) -> *const u8 {
        path.as_os_str().as_encoded_bytes().as_ptr()
    }

    /// A spare with room for `bytes`, as a finished job leaves one.
    fn spare(bytes: usize) -> PathBuf {
        PathBuf::from(std::ffi::OsString::with_capacity(bytes))
    }

    #[test]
    fn parsed_paths_reuse_the_spares_buffers() {
        let mut spares = SparePaths::with_bound(4);
        let (first, second) = (spare(128), spare(128));
        let (first_at, second_at) = (buffer_of(&first), buffer_of(&second));
        spares.give(first);
        spares.give(second);
        let line = br#"{"op":"encrypt","input":"/d/./in//a","output":"/o/b/"}"#;
        let parsed = parse_request_reusing(line, &mut spares);
        let Ok(Request::File(job)) = parsed.request else {
            panic!("a good request: {parsed:?}");
        };
        assert_eq!(job, spec(FileOp::Encrypt, "/d/in/a", "/o/b"));
        // The pool hands out its last spare first.
        assert_eq!(buffer_of(&job.input), second_at);
        assert_eq!(buffer_of(&job.output), first_at);
        assert_eq!(job.input.capacity(), 128);
        assert!(spares.is_empty());
        // Once the job's record goes, the same buffers serve the next request.
        spares.give(job.input);
        spares.give(job.output);
        let parsed = parse_request_reusing(line, &mut spares);
        let Ok(Request::File(again)) = parsed.request else {
            panic!("a good request: {parsed:?}");
        };
        assert_eq!(buffer_of(&again.input), first_at);
        assert_eq!(buffer_of(&again.output), second_at);
    }

    #[test]
    fn a_spare_too_small_grows_to_a_power_of_two() {
        let mut spares = SparePaths::with_bound(1);
        spares.give(spare(8));
        let path = spares.take(100);
        assert!(path.as_os_str().is_empty());
        assert_eq!(path.capacity(), 128);
        // With no spare left, a new path is made, sized the same way.
        assert_eq!(spares.take(129).capacity(), 256);
        assert_eq!(spares.take(0).capacity(), 0);
    }

    #[test]
    fn the_spare_pool_stays_bounded() {
        let mut spares = SparePaths::with_bound(3);
        for _ in 0..10 {
            spares.give(spare(64));
        }
        assert_eq!(spares.len(), 3);
        // A spare larger than any request path needs is dropped, not kept.
        let mut spares = SparePaths::with_bound(3);
        spares.give(spare(SPARE_PATH_MAX_BYTES + 1));
        assert!(spares.is_empty());
        spares.give(spare(SPARE_PATH_MAX_BYTES));
        assert_eq!(spares.len(), 1);
        // The pool `parse_request` uses has room for none.
        let mut none = SparePaths::default();
        none.give(spare(64));
        assert!(none.is_empty());
    }

    #[test]
    fn refused_requests_give_their_spares_back() {
        for line in [
            // The input is bad: nothing was kept.
            r#"{"op":"encrypt","input":"rel","output":"/o"}"#,
            // The output is bad: the input's buffer goes back.
            r#"{"op":"encrypt","input":"/i","output":"/a/../b"}"#,
            // Both paths are good, a later field is not: both go back.
            r#"{"op":"encrypt","input":"/i","output":"/o","key":""}"#,
            r#"{"op":"decrypt","input":"/i","output":"/o","overwrite":true,"skip_existing":true}"#,
        ] {
            let mut spares = SparePaths::with_bound(4);
            spares.give(spare(64));
            spares.give(spare(64));
            let parsed = parse_request_reusing(line.as_bytes(), &mut spares);
            assert!(parsed.request.is_err(), "{line}");
            assert_eq!(parsed, parse(line), "{line}");
            assert_eq!(spares.len(), 2, "{line}");
        }
    }

    const JOB: JobId = JobId { shard: 1, seq: 42 };

    #[test]
    fn simple_ops_parse() {
        assert_eq!(ok(r#"{"op":"ping"}"#), Request::Ping);
        assert_eq!(ok(r#"{"op":"jobs"}"#), Request::Jobs);
        assert_eq!(ok(r#"{"op":"stats"}"#), Request::Stats);
        assert_eq!(ok(r#"{"op":"keys"}"#), Request::Keys);
        assert_eq!(ok(r#"{"op":"reload"}"#), Request::Reload);
        assert_eq!(
            ok(r#"{"op":"status","job":"1-42"}"#),
            Request::Status { job: JOB }
        );
        assert_eq!(
            ok(r#"{"op":"cancel","job":"1-42"}"#),
            Request::Cancel { job: JOB }
        );
        // Whitespace around and inside the object, and a CR from a CRLF client, are fine.
        assert_eq!(ok(" { \"op\" : \"ping\" } \r"), Request::Ping);
    }

    #[test]
    fn file_ops_parse_with_defaults() {
        for op in FileOp::ALL {
            let line = format!(r#"{{"op":"{op}","input":"/d/in","output":"/d/out"}}"#);
            assert_eq!(ok(&line), Request::File(spec(op, "/d/in", "/d/out")));
        }
    }

    #[test]
    fn file_ops_parse_with_all_fields() {
        let line = r#"{"op":"encrypt","id":"a","input":"/d/in","output":"/d/out","key":"prod",
            "format":"openssl","recursive":true,"overwrite":true,"skip_existing":false,
            "wait":false}"#;
        let mut want = spec(FileOp::Encrypt, "/d/in", "/d/out");
        want.key = Some("prod".into());
        want.format = Format::Openssl;
        want.recursive = true;
        want.overwrite = true;
        want.wait = false;
        assert_eq!(ok(line), Request::File(want));

        let line = r#"{"op":"decrypt","input":"/d/in","output":"/d/out","fds":true}"#;
        let mut want = spec(FileOp::Decrypt, "/d/in", "/d/out");
        want.fds = true;
        assert_eq!(ok(line), Request::File(want));

        for op in [FileOp::Decrypt, FileOp::Rewrap] {
            let line = format!(
                r#"{{"op":"{op}","input":"/in","output":"/out","key":"legacy",
                "recursive":true,"overwrite":false,"skip_existing":true,"wait":true}}"#
            );
            let mut want = spec(op, "/in", "/out");
            want.key = Some("legacy".into());
            want.recursive = true;
            want.skip_existing = true;
            assert_eq!(ok(&line), Request::File(want));
        }
        let line = r#"{"op":"encrypt","input":"/i","output":"/o","format":"ringcrypt"}"#;
        assert_eq!(ok(line), Request::File(spec(FileOp::Encrypt, "/i", "/o")));
    }

    #[test]
    fn ids_are_read_even_when_the_request_is_bad() {
        for (id_text, id) in [
            (r#""abc""#, Value::from("abc")),
            ("7", Value::from(7)),
            ("-3", Value::from(-3)),
            ("1.5", Value::from(1.5)),
            ("true", Value::Bool(true)),
            ("null", Value::Null),
        ] {
            for rest in [
                r#""op":"ping""#,
                r#""op":"nope""#,
                r#""op":7"#,
                r#""x":1"#,
                r#""op":"ping","op":"ping""#,
                r#""op":"encrypt","input":"rel","output":"/o""#,
            ] {
                let parsed = parse(&format!("{{\"id\":{id_text},{rest}}}"));
                assert_eq!(parsed.id, Some(RequestId(id.clone())), "{rest}");
            }
        }
        assert_eq!(parse(r#"{"op":"ping"}"#).id, None);
    }

    #[test]
    fn malformed_lines_are_bad_requests_without_an_id() {
        for line in [
            &b""[..],
            b"not json",
            b"{\"op\":\"ping\"",
            b"{\"op\":\"ping\"} x",
            b"{\"id\":1,\"op\":\"ping\"}}",
            b"\xff\xfe{}",
            b"{\"op\":\"ping\",\"id\":\"\xc3\x28\"}",
        ] {
            let parsed = parse_request(line);
            let err = parsed.request.unwrap_err();
            assert_eq!(err.code, Code::BadRequest, "{line:?}");
            assert!(err.message.contains("not valid JSON"), "{}", err.message);
            assert_eq!(parsed.id, None);
        }
        for (line, what) in [
            ("[1,2]", "an array"),
            ("\"ping\"", "a string"),
            ("3", "a number"),
            ("null", "null"),
            ("true", "a boolean"),
        ] {
            let err = err(line);
            assert_eq!(err.code, Code::BadRequest);
            assert!(err.message.contains(what), "{}", err.message);
            assert!(err.message.contains("not a JSON object"), "{}", err.message);
        }
    }

    #[test]
    fn bad_ids_are_refused_and_not_echoed() {
        for line in [
            r#"{"id":[1],"op":"ping"}"#,
            r#"{"id":{"a":1},"op":"ping"}"#,
            r#"{"id":1,"id":2,"op":"ping"}"#,
        ] {
            let parsed = parse(line);
            assert_eq!(parsed.id, None, "{line}");
            let err = parsed.request.unwrap_err();
            assert_eq!(err.code, Code::BadRequest);
            assert!(err.message.contains("\"id\""), "{}", err.message);
        }
        assert!(RequestId::new(Value::Array(vec![])).is_err());
        assert!(RequestId::new(Value::Object(Map::new())).is_err());
        assert!(RequestId::new(Value::Null).is_ok());
    }

    #[test]
    fn op_errors() {
        let e = err(r#"{"id":1}"#);
        assert_eq!(e.code, Code::BadRequest);
        assert!(e.message.contains("no \"op\""), "{}", e.message);
        let e = err(r#"{"op":["ping"]}"#);
        assert_eq!(e.code, Code::BadRequest);
        assert!(e.message.contains("must be a string"), "{}", e.message);
        let e = err(r#"{"op":"encrpyt","id":5}"#);
        assert_eq!(e.code, Code::UnknownOp);
        assert!(e.message.contains("\"encrpyt\""), "{}", e.message);
        assert!(e.message.contains("encrypt"), "{}", e.message);
        // A huge op name is not echoed whole.
        let long = "x".repeat(10_000);
        let e = err(&format!(r#"{{"op":"{long}"}}"#));
        assert_eq!(e.code, Code::UnknownOp);
        assert!(e.message.len() < 400, "{}", e.message.len());
    }

    #[test]
    fn field_errors_name_the_field_and_the_type() {
        let cases = [
            (
                r#"{"op":"encrypt","output":"/o"}"#,
                "\"input\"",
                "absolute path",
            ),
            (
                r#"{"op":"encrypt","input":"/i"}"#,
                "\"output\"",
                "absolute path",
            ),
            (
                r#"{"op":"encrypt","input":5,"output":"/o"}"#,
                "\"input\"",
                "a number",
            ),
            (
                r#"{"op":"decrypt","input":"/i","output":null}"#,
                "\"output\"",
                "null",
            ),
            (
                r#"{"op":"encrypt","input":"/i","output":"/o","key":3}"#,
                "\"key\"",
                "a number",
            ),
            (
                r#"{"op":"encrypt","input":"/i","output":"/o","key":null}"#,
                "\"key\"",
                "leave the field out",
            ),
            (
                r#"{"op":"encrypt","input":"/i","output":"/o","key":""}"#,
                "\"key\"",
                "1 to 256",
            ),
            (
                r#"{"op":"encrypt","input":"/i","output":"/o","key":"a\nb"}"#,
                "\"key\"",
                "control",
            ),
            (
                r#"{"op":"encrypt","input":"/i","output":"/o","format":"aes"}"#,
                "\"format\"",
                "\"aes\"",
            ),
            (
                r#"{"op":"encrypt","input":"/i","output":"/o","format":1}"#,
                "\"format\"",
                "a number",
            ),
            (
                r#"{"op":"encrypt","input":"/i","output":"/o","recursive":"yes"}"#,
                "\"recursive\"",
                "true or false",
            ),
            (
                r#"{"op":"rewrap","input":"/i","output":"/o","wait":0}"#,
                "\"wait\"",
                "true or false",
            ),
            (
                r#"{"op":"encrypt","input":"/i","output":"/o","overwirte":true}"#,
                "\"overwirte\"",
                "\"overwrite\"",
            ),
            (
                r#"{"op":"decrypt","input":"/i","output":"/o","format":"openssl"}"#,
                "\"format\"",
                "encrypt only",
            ),
            (
                r#"{"op":"rewrap","input":"/i","output":"/o","format":"ringcrypt"}"#,
                "\"format\"",
                "encrypt only",
            ),
            (
                r#"{"op":"encrypt","input":"/i","output":"/o","overwrite":true,"skip_existing":true}"#,
                "\"skip_existing\"",
                "not both",
            ),
            (
                r#"{"op":"encrypt","input":"/i","output":"/o","fds":true,"recursive":true}"#,
                "\"fds\"",
                "single files",
            ),
            (
                r#"{"op":"decrypt","input":"/i","output":"/o","fds":true,"skip_existing":true}"#,
                "\"fds\"",
                "by path",
            ),
            (
                r#"{"op":"encrypt","input":"/i","output":"/o","fds":1}"#,
                "\"fds\"",
                "true or false",
            ),
            (r#"{"op":"status"}"#, "\"job\"", "1-42"),
            (r#"{"op":"status","job":42}"#, "\"job\"", "a number"),
            (r#"{"op":"cancel","job":"x-1"}"#, "\"job\"", "1-42"),
            (
                r#"{"op":"ping","verbose":true}"#,
                "\"verbose\"",
                "no fields",
            ),
            (
                r#"{"op":"status","job":"1-1","all":true}"#,
                "\"all\"",
                "\"job\"",
            ),
            (r#"{"op":"ping","op":"ping"}"#, "\"op\"", "more than once"),
        ];
        for (line, field, hint) in cases {
            let e = err(line);
            assert_eq!(e.code, Code::BadRequest, "{line}");
            assert!(e.message.contains(field), "{line}: {}", e.message);
            assert!(e.message.contains(hint), "{line}: {}", e.message);
        }
        let long_key = "k".repeat(MAX_KEY_NAME_BYTES + 1);
        let e = err(&format!(
            r#"{{"op":"encrypt","input":"/i","output":"/o","key":"{long_key}"}}"#
        ));
        assert!(e.message.contains("257 bytes"), "{}", e.message);
        let key = "k".repeat(MAX_KEY_NAME_BYTES);
        let line = format!(r#"{{"op":"encrypt","input":"/i","output":"/o","key":"{key}"}}"#);
        assert!(matches!(ok(&line), Request::File(spec) if spec.key == Some(key)));
    }

    fn input_of(path: &str) -> Result<PathBuf, Error> {
        let line = serde_json::json!({"op": "encrypt", "input": path, "output": "/o"});
        match parse(&line.to_string()).request? {
            Request::File(spec) => Ok(spec.input),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn paths_are_normalized_lexically() {
        for (given, want) in [
            ("/a/b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/a//b", "/a/b"),
            ("/a/b/", "/a/b"),
            ("//a///b//", "/a/b"),
            ("/./a/.", "/a"),
            ("/", "/"),
            ("//", "/"),
            ("/.", "/"),
            ("/a b/ü.txt", "/a b/ü.txt"),
            ("/a/...", "/a/..."),
            ("/a/..b", "/a/..b"),
        ] {
            assert_eq!(input_of(given).unwrap(), PathBuf::from(want), "{given}");
        }
    }

    #[test]
    fn bad_paths_are_refused() {
        for (given, hint) in [
            ("a/b", "must be absolute"),
            ("./a", "must be absolute"),
            ("~/a", "must be absolute"),
            ("", "empty"),
            ("/a/../b", "\"..\""),
            ("/..", "\"..\""),
            ("/a/..", "\"..\""),
            ("/a\0b", "NUL"),
        ] {
            let e = input_of(given).unwrap_err();
            assert_eq!(e.code, Code::BadRequest, "{given:?}");
            assert!(e.message.contains(hint), "{given:?}: {}", e.message);
            assert!(e.message.contains("\"input\""), "{given:?}: {}", e.message);
        }
        let e = input_of("a/b").unwrap_err();
        assert!(
            e.message.contains("client resolves relative"),
            "{}",
            e.message
        );

        let longest = format!("/{}", "a".repeat(MAX_PATH_BYTES - 1));
        assert_eq!(input_of(&longest).unwrap(), PathBuf::from(&longest));
        let e = input_of(&format!("{longest}a")).unwrap_err();
        assert_eq!(e.code, Code::BadRequest);
        assert!(e.message.contains("limit"), "{}", e.message);
        // The limit applies after normalization.
        assert!(input_of(&format!("{longest}/./")).is_ok());
    }

    #[test]
    fn long_lines_are_too_large() {
        let pad = |total: usize| {
            let head = r#"{"op":"ping","id":""#;
            let tail = r#""}"#;
            format!(
                "{head}{}{tail}",
                "x".repeat(total - head.len() - tail.len())
            )
        };
        let at_limit = pad(MAX_REQUEST_LINE_BYTES);
        assert_eq!(at_limit.len(), MAX_REQUEST_LINE_BYTES);
        let parsed = parse(&at_limit);
        assert_eq!(parsed.request, Ok(Request::Ping));
        assert!(parsed.id.is_some());

        let over = pad(MAX_REQUEST_LINE_BYTES + 1);
        let parsed = parse(&over);
        assert_eq!(parsed.id, None);
        assert_eq!(parsed.request.unwrap_err().code, Code::TooLarge);
        let junk = vec![b'{'; MAX_REQUEST_LINE_BYTES + 1];
        assert_eq!(
            parse_request(&junk).request.unwrap_err().code,
            Code::TooLarge
        );
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let deep = format!(
            r#"{{"op":"ping","x":{}{}}}"#,
            "[".repeat(20_000),
            "]".repeat(20_000)
        );
        assert_eq!(err(&deep).code, Code::BadRequest);
        let deep = format!(r#"{{"id":{}1{}}}"#, "[".repeat(30_000), "]".repeat(30_000));
        assert_eq!(err(&deep).code, Code::BadRequest);
    }

    #[test]
    fn job_ids_round_trip_and_refuse_junk() {
        for job in [
            JobId { shard: 0, seq: 0 },
            JOB,
            JobId {
                shard: u32::MAX,
                seq: u64::MAX,
            },
        ] {
            assert_eq!(job.to_string().parse::<JobId>(), Ok(job));
            let json = serde_json::to_string(&job).unwrap();
            assert_eq!(json, format!("\"{job}\""));
            assert_eq!(serde_json::from_str::<JobId>(&json).unwrap(), job);
        }
        assert_eq!(JOB.to_string(), "1-42");
        for text in [
            "x-1",
            "1-",
            "-1",
            "1-2-3",
            "",
            "-",
            "1",
            "12",
            "+1-2",
            "1-+2",
            " 1-2",
            "1-2 ",
            "01-2",
            "1-02",
            "1_2",
            "1-x",
            "4294967296-1",
            "1-18446744073709551616",
            "99999999999999999999-1",
        ] {
            let e = text.parse::<JobId>().unwrap_err();
            assert_eq!(e.code, Code::BadRequest, "{text:?}");
            assert!(e.message.contains("1-42"), "{}", e.message);
        }
        assert!(serde_json::from_str::<JobId>("\"x-1\"").is_err());
        assert!(serde_json::from_str::<JobId>("12").is_err());
    }

    /// Parses a reply line and checks the framing every reply promises.
    fn reply(line: &str, kind: &str, id: Option<&RequestId>) -> Reply {
        assert!(line.ends_with('\n'), "{line:?}");
        assert_eq!(line.matches('\n').count(), 1, "{line:?}");
        let prefix = format!("{{\"type\":\"{kind}\"");
        assert!(line.starts_with(&prefix), "{line}");
        if let Some(id) = id {
            assert!(
                line[prefix.len()..].starts_with(&format!(",\"id\":{id}")),
                "{line}"
            );
        }
        let value: Value = serde_json::from_str(line).unwrap();
        assert!(value.is_object());
        let reply = parse_reply(line).unwrap();
        assert_eq!(reply.kind, kind);
        assert!(reply.answers(id));
        reply
    }

    fn info(state: JobState) -> JobInfo {
        JobInfo {
            job: JOB,
            op: FileOp::Decrypt,
            input: PathBuf::from("/d/a \"quoted\"\n.rcrypt"),
            output: PathBuf::from("/d/a"),
            state,
            bytes_done: 10,
            bytes_total: 20,
        }
    }

    #[test]
    fn replies_are_one_json_line_with_type_first_and_the_id_echoed() {
        let ids = [
            None,
            Some(RequestId::from("req-1")),
            Some(RequestId::from("tricky \"id\"\n\u{2028}")),
            Some(RequestId::from(7u64)),
            Some(RequestId::from(-7i64)),
            Some(RequestId::from(u64::MAX)),
            Some(RequestId::new(Value::from(1.5)).unwrap()),
            Some(RequestId::new(Value::Null).unwrap()),
            Some(RequestId::from(true)),
            Some(RequestId::from(false)),
        ];
        for id in &ids {
            let id = id.as_ref();
            let r = reply(&pong(id, "0.1.0", 8, "uring"), "pong", id);
            assert_eq!(r.fields["version"], "0.1.0");
            assert_eq!(r.fields["shards"], 8);
            assert_eq!(r.fields["backend"], "uring");
            if let Some(id) = id {
                assert_eq!(r.id.as_ref(), Some(id.value()));
            } else {
                assert_eq!(r.id, None);
            }

            let r = reply(&accepted(id, JOB), "accepted", id);
            assert_eq!(r.job(), Some(JOB));

            let r = reply(&cancelled(id, JOB), "cancelled", id);
            assert_eq!(r.job(), Some(JOB));

            let p = Progress {
                job: JOB,
                files_done: 1,
                files_total: 2,
                bytes_done: 3,
                bytes_total: 4,
                rate_bytes_per_sec: 5,
                totals_final: false,
            };
            let r = reply(&progress(id, &p), "progress", id);
            for (name, n) in [
                ("files_done", 1),
                ("files_total", 2),
                ("bytes_done", 3),
                ("bytes_total", 4),
                ("rate_bytes_per_sec", 5),
            ] {
                assert_eq!(r.fields[name], n, "{name}");
            }
            assert_eq!(r.fields["totals_final"], false);

            let r = reply(&status(id, &info(JobState::Running)), "status", id);
            assert_eq!(r.fields["state"], "running");
            assert_eq!(r.fields["op"], "decrypt");
            assert_eq!(r.fields["input"], "/d/a \"quoted\"\n.rcrypt");
            assert_eq!(r.fields["output"], "/d/a");
            assert_eq!(r.fields["progress"]["bytes_done"], 10);
            assert_eq!(r.fields["progress"]["bytes_total"], 20);

            let all: Vec<JobInfo> = JobState::ALL.into_iter().map(info).collect();
            let r = reply(&jobs(id, &all), "jobs", id);
            let list = r.fields["jobs"].as_array().unwrap();
            assert_eq!(list.len(), 5);
            for (entry, state) in list.iter().zip(JobState::ALL) {
                assert_eq!(entry["state"], state.as_str());
                assert_eq!(entry["job"], "1-42");
                assert_eq!(entry["progress"]["bytes_total"], 20);
            }
            let r = reply(&jobs(id, &[]), "jobs", id);
            assert_eq!(r.fields["jobs"], serde_json::json!([]));

            let shard = ShardStats {
                shard: 3,
                queued: 1,
                running: 2,
                jobs_done: 3,
                bytes_in: 4,
                bytes_out: 5,
            };
            let r = reply(&stats(id, &[shard.clone(), shard]), "stats", id);
            assert_eq!(r.fields["shards"][1]["shard"], 3);
            assert_eq!(r.fields["shards"][1]["bytes_out"], 5);

            let ring = [
                KeyInfo {
                    name: "prod".into(),
                    id: Some("00ff".repeat(8)),
                    kind: "ringcrypt",
                    state: "active",
                },
                KeyInfo {
                    name: "legacy".into(),
                    id: None,
                    kind: "openssl",
                    state: "decrypt-only",
                },
            ];
            let r = reply(&keys(id, Some("prod"), &ring), "keys", id);
            assert_eq!(r.fields["default"], "prod");
            assert_eq!(r.fields["keys"][0]["id"], "00ff".repeat(8));
            assert_eq!(r.fields["keys"][1]["id"], Value::Null);
            assert_eq!(r.fields["keys"][1]["state"], "decrypt-only");
            let r = reply(&keys(id, None, &[]), "keys", id);
            assert_eq!(r.fields["default"], Value::Null);

            let r = reply(&reloaded(id, 3), "reloaded", id);
            assert_eq!(r.fields["keys"], 3);

            for code in Code::ALL {
                let e = Error::new(code, "cannot open /x: \"gone\"\n");
                let r = reply(&error(id, &e), "error", id);
                assert_eq!(r.fields["code"], code.as_str());
                assert_eq!(r.error(), Some(e));
            }
        }
    }

    #[test]
    fn error_reply_layout_is_exact() {
        let id = RequestId::from("r1");
        let e = Error::new(Code::NotFound, "cannot open /x");
        assert_eq!(
            error(Some(&id), &e),
            "{\"type\":\"error\",\"id\":\"r1\",\"code\":\"not_found\",\"message\":\"cannot open /x\"}\n"
        );
        assert_eq!(
            status(None, &info(JobState::Queued)),
            "{\"type\":\"status\",\"job\":\"1-42\",\"state\":\"queued\",\
             \"progress\":{\"bytes_done\":10,\"bytes_total\":20},\"op\":\"decrypt\",\
             \"input\":\"/d/a \\\"quoted\\\"\\n.rcrypt\",\"output\":\"/d/a\"}\n"
        );
    }

    #[test]
    fn ids_echo_exactly_as_sent() {
        for id_text in [
            r#""abc""#,
            "7",
            "-7",
            "18446744073709551615",
            "1.5",
            "null",
            "true",
            "false",
            r#""\u00e9\n""#,
        ] {
            let parsed = parse(&format!(r#"{{"op":"ping","id":{id_text}}}"#));
            let id = parsed.id.unwrap();
            let line = pong(Some(&id), "v", 1, "sync");
            let want_value: Value = serde_json::from_str(id_text).unwrap();
            assert_eq!(
                parse_reply(&line).unwrap().id,
                Some(want_value),
                "{id_text}"
            );
            if !id_text.contains('\\') {
                assert!(line.contains(&format!(",\"id\":{id_text},")), "{line}");
            }
        }
    }

    #[test]
    fn done_caps_failures() {
        let failure = |i: usize| Failure {
            path: PathBuf::from(format!("/d/f{i}")),
            code: Code::AuthFailed,
            message: format!("/d/f{i}: auth failed"),
        };
        let mut report = DoneReport {
            job: JOB,
            bytes_in: 1,
            bytes_out: 2,
            micros: 3,
            files_ok: 4,
            files_failed: 2,
            files_skipped: 5,
            failures: (0..2).map(failure).collect(),
            skipped: vec![Skipped {
                path: PathBuf::from("/d/link"),
                reason: "symbolic link".into(),
            }],
        };
        let id = RequestId::from(1u64);
        let r = reply(&done(Some(&id), &report), "done", Some(&id));
        assert_eq!(r.fields["failures"].as_array().unwrap().len(), 2);
        assert_eq!(r.fields["failures"][1]["path"], "/d/f1");
        assert_eq!(r.fields["failures"][1]["code"], "auth_failed");
        assert_eq!(r.fields["files_skipped"], 5);
        assert_eq!(r.fields["skipped"][0]["reason"], "symbolic link");
        assert_eq!(r.fields["skipped_omitted"], 4, "5 skipped, 1 listed");
        assert!(!r.fields.contains_key("failures_omitted"));

        report.failures = (0..MAX_FAILURES_REPORTED).map(failure).collect();
        report.files_failed = MAX_FAILURES_REPORTED as u64;
        let r = reply(&done(None, &report), "done", None);
        assert_eq!(
            r.fields["failures"].as_array().unwrap().len(),
            MAX_FAILURES_REPORTED
        );
        assert!(!r.fields.contains_key("failures_omitted"));

        report.failures = (0..250).map(failure).collect();
        report.files_failed = 250;
        let r = reply(&done(None, &report), "done", None);
        assert_eq!(
            r.fields["failures"].as_array().unwrap().len(),
            MAX_FAILURES_REPORTED
        );
        assert_eq!(r.fields["failures_omitted"], 150);

        // The job kept fewer failures than it counted.
        report.failures.truncate(10);
        report.files_failed = 1000;
        let r = reply(&done(None, &report), "done", None);
        assert_eq!(r.fields["failures"].as_array().unwrap().len(), 10);
        assert_eq!(r.fields["failures_omitted"], 990);

        report.failures.clear();
        report.files_failed = 0;
        let r = reply(&done(None, &report), "done", None);
        assert_eq!(r.fields["failures"], serde_json::json!([]));
    }

    #[test]
    fn non_utf8_paths_are_shown_lossily() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        let mut info = info(JobState::Done);
        info.input = PathBuf::from(OsStr::from_bytes(b"/d/\xffname"));
        let r = reply(&status(None, &info), "status", None);
        assert_eq!(r.fields["input"], "/d/\u{fffd}name");
    }

    fn all_requests() -> Vec<Request> {
        let mut requests = vec![
            Request::Ping,
            Request::Status { job: JOB },
            Request::Cancel {
                job: JobId {
                    shard: u32::MAX,
                    seq: u64::MAX,
                },
            },
            Request::Jobs,
            Request::Stats,
            Request::Keys,
            Request::Reload,
        ];
        for op in FileOp::ALL {
            requests.push(Request::File(spec(op, "/in", "/out")));
            let mut full = spec(op, "/d/a b/\"c\"", "/");
            full.key = Some("k é".into());
            full.recursive = true;
            full.skip_existing = true;
            full.wait = false;
            if op == FileOp::Encrypt {
                full.format = Format::Openssl;
            }
            requests.push(Request::File(full.clone()));
            full.skip_existing = false;
            full.overwrite = true;
            requests.push(Request::File(full));
            let mut passed = spec(op, "/in", "/out");
            passed.fds = true;
            passed.overwrite = true;
            requests.push(Request::File(passed));
        }
        requests
    }

    #[test]
    fn encoded_requests_parse_back() {
        let mut spares = SparePaths::with_bound(2);
        spares.give(spare(1));
        spares.give(spare(300));
        for request in all_requests() {
            for id in [
                None,
                Some(RequestId::from("x")),
                Some(RequestId::from(3u64)),
                Some(RequestId::new(Value::Null).unwrap()),
            ] {
                let line = encode_request(id.as_ref(), &request);
                assert!(
                    line.ends_with('\n') && line.starts_with("{\"op\":"),
                    "{line}"
                );
                let parsed = parse_request(line.trim_end_matches('\n').as_bytes());
                assert_eq!(parsed.request, Ok(request.clone()), "{line}");
                assert_eq!(parsed.id, id, "{line}");
                // Spares that held other paths give the same answer.
                let reused = parse_request_reusing(line.trim_end().as_bytes(), &mut spares);
                assert_eq!(reused, parsed, "{line}");
                if let Ok(Request::File(spec)) = reused.request {
                    spares.give(spec.input);
                    spares.give(spec.output);
                }
            }
        }
        // Defaults are left out, so older daemons understand requests that do not use newer
        // fields.
        let line = encode_request(None, &Request::File(spec(FileOp::Decrypt, "/i", "/o")));
        assert_eq!(
            line,
            "{\"op\":\"decrypt\",\"input\":\"/i\",\"output\":\"/o\"}\n"
        );
        // A format on decrypt is sent, so the daemon reports the mistake.
        let mut wrong = spec(FileOp::Decrypt, "/i", "/o");
        wrong.format = Format::Openssl;
        let line = encode_request(None, &Request::File(wrong));
        let e = parse_request(line.trim_end().as_bytes())
            .request
            .unwrap_err();
        assert!(e.message.contains("encrypt only"), "{}", e.message);
    }

    #[test]
    fn replies_that_are_not_replies_are_refused() {
        for line in [
            "",
            "nope",
            "[]",
            "{}",
            "{\"type\":3}",
            "{\"id\":1}",
            "HTTP/1.1 400\r\n",
        ] {
            let e = parse_reply(line).unwrap_err();
            assert_eq!(e.code, Code::Internal, "{line:?}");
            assert!(e.message.contains("ringcryptd"), "{}", e.message);
        }
        let r = parse_reply("{\"type\":\"future\",\"new_field\":[1]}\n").unwrap();
        assert_eq!(r.kind, "future");
        assert_eq!(r.error(), None);
        let r = parse_reply(r#"{"type":"error","code":"brand_new","message":"m"}"#).unwrap();
        let e = r.error().unwrap();
        assert_eq!(e.code, Code::Internal);
        assert!(e.message.contains("brand_new"), "{}", e.message);
    }

    /// Keys a fuzzed request object may have: the real ones, typos and junk.
    fn field_name() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "op",
                "id",
                "input",
                "output",
                "key",
                "format",
                "recursive",
                "overwrite",
                "skip_existing",
                "wait",
                "job",
                "overwirte",
                "",
            ])
            .prop_map(String::from),
            ".{0,12}",
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            prop::sample::select(vec![
                "ping",
                "encrypt",
                "decrypt",
                "rewrap",
                "status",
                "cancel",
                "jobs",
                "stats",
                "keys",
                "reload",
                "ringcrypt",
                "openssl",
                "1-42",
                "0-0",
                "/a/b",
                "/a/../b",
                "/",
                "rel",
                "/a\0b",
                "x-1",
                "",
            ])
            .prop_map(Value::from),
            ".{0,40}".prop_map(Value::from),
            "/[a-z./]{0,30}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((field_name(), inner), 0..4)
                    .prop_map(|entries| Value::Object(entries.into_iter().collect())),
            ]
        })
    }

    /// A request-shaped object, written by hand so that it may repeat keys.
    fn request_text() -> impl Strategy<Value = String> {
        prop::collection::vec((field_name(), json_value()), 0..10).prop_map(|entries| {
            let body: Vec<String> = entries
                .iter()
                .map(|(key, value)| format!("{}:{value}", json(key)))
                .collect();
            format!("{{{}}}", body.join(","))
        })
    }

    fn file_spec() -> impl Strategy<Value = FileJobSpec> {
        (
            prop::sample::select(FileOp::ALL.to_vec()),
            "(/[^/\\x00]{1,8}){0,4}",
            "(/[^/\\x00]{1,8}){0,4}",
            prop::option::of("[^\\p{Cc}]{1,20}"),
            any::<bool>(),
            (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
        )
            .prop_map(|(op, input, output, key, openssl, flags)| {
                let normal = |p: String| {
                    let p = if p.is_empty() { "/".to_string() } else { p };
                    // "." and ".." components are not normal; replace them.
                    let p = p
                        .split('/')
                        .map(|c| if c == "." || c == ".." { "dot" } else { c })
                        .collect::<Vec<_>>()
                        .join("/");
                    PathBuf::from(p)
                };
                let mut spec = FileJobSpec::new(op, normal(input), normal(output));
                spec.key = key;
                if op == FileOp::Encrypt && openssl {
                    spec.format = Format::Openssl;
                }
                (
                    spec.recursive,
                    spec.overwrite,
                    spec.skip_existing,
                    spec.wait,
                ) = flags;
                if spec.overwrite {
                    spec.skip_existing = false;
                }
                spec
            })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let parsed = parse_request(&bytes);
            // Only a line with an object in it can be a request.
            let has_brace = bytes.contains(&b'{');
            prop_assert!(parsed.request.is_err() || has_brace);
        }

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,300}") {
            let _ = parse_request(text.as_bytes());
            let _ = parse_reply(&text);
        }

        #[test]
        fn request_shaped_objects_never_panic(text in request_text()) {
            let parsed = parse_request(text.as_bytes());
            // Whatever the outcome, the error reply for it is a valid line.
            if let Err(err) = &parsed.request {
                let line = error(parsed.id.as_ref(), err);
                prop_assert!(parse_reply(&line).is_ok());
                prop_assert!(parse_reply(&line).unwrap().answers(parsed.id.as_ref()));
            }
        }

        #[test]
        fn file_specs_round_trip(spec in file_spec(), id in any::<u64>()) {
            let id = RequestId::from(id);
            let request = Request::File(spec);
            let line = encode_request(Some(&id), &request);
            let parsed = parse_request(line.trim_end_matches('\n').as_bytes());
            prop_assert_eq!(parsed.request, Ok(request));
            prop_assert_eq!(parsed.id, Some(id));
        }
    }
}
