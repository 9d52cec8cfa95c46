//! The client's side of the wire: [`encode_request`] writes a request line; [`parse_reply`]
//! reads a reply line, once, into its type, its id and its fields ([`Reply`]), and
//! [`Reply::into_line`] turns those into what the line says, typed ([`ReplyLine`]), so a
//! caller matches on a variant instead of looking fields up by name. Reply types and fields
//! this side does not know are kept or passed over, never refused, as the wire format asks
//! ("this list may grow"), so a newer daemon does not break an older client.
//!
//! It does **not** own the connection or decide which reply line ends a request (that is
//! `crate::client`), nor print anything (`crate::client::cli`); the daemon's sides of these lines
//! are `request` and `reply`.

use std::path::PathBuf;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::Format;
use super::reply::{Obj, line_of, write_json};
use super::{
    FileJobSpec, JobId, Progress, Request, RequestId, ShardStats, Skipped, describe, quote,
};
use crate::error::{Code, Error};

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
                obj.path("input", &spec.input);
                // Verify names no output (its spec's output is its input).
                if spec.op.writes() {
                    obj.path("output", &spec.output);
                }
                file_options(&mut obj, spec);
            }
            Request::Batch(batch) => {
                let path =
                    |out: &mut Vec<u8>, path: &PathBuf| write_json(out, &*path.to_string_lossy());
                obj.array("inputs", &batch.inputs, path);
                if batch.spec.op.writes() {
                    obj.array("outputs", &batch.outputs, path);
                }
                // A batch's spec never has `recursive`, `fds` or `partition`.
                file_options(&mut obj, &batch.spec);
            }
            Request::Status { job } | Request::Cancel { job } => {
                obj.job("job", *job);
            }
            Request::Ping | Request::Jobs | Request::Stats | Request::Keys | Request::Reload => {}
        }
        obj.line();
    })
}

/// A file request's options after its paths, each only when not the default.
fn file_options(obj: &mut Obj, spec: &FileJobSpec) {
    if let Some(key) = &spec.key {
        obj.str("key", key);
    }
    // Written when not the default, even on decrypt or rewrap, where the daemon refuses
    // it: a caller's mistake is reported rather than dropped.
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
    if let Some(partition) = spec.partition {
        obj.str("partition", &partition.to_string());
    }
    if spec.progress {
        obj.bool("progress", true);
    }
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
        (self.kind == "error").then(|| error_of(&self.fields))
    }

    /// What the line says, typed; its fields move into the result (the id stays behind:
    /// match it with [`Reply::answers`] first). See [`ReplyLine`] for how leniently each
    /// type is read. A known type whose fields do not have their documented JSON types is
    /// `internal`, as a line that is not a reply is: the daemon never sends one.
    pub fn into_line(self) -> Result<ReplyLine, Error> {
        let Reply { kind, fields, .. } = self;
        let line = match kind.as_str() {
            "pong" => typed(fields).map(ReplyLine::Pong),
            "accepted" => typed(fields).map(|JobField { job }| ReplyLine::Accepted { job }),
            "progress" => typed(fields).map(ReplyLine::Progress),
            "done" => typed(fields).map(ReplyLine::Done),
            "status" => typed(fields).map(ReplyLine::Status),
            "cancelled" => typed(fields).map(|JobField { job }| ReplyLine::Cancelled { job }),
            "jobs" => typed(fields).map(|JobsField { jobs }| ReplyLine::Jobs(jobs)),
            "stats" => typed(fields).map(|ShardsField { shards }| ReplyLine::Stats(shards)),
            "keys" => typed(fields).map(ReplyLine::Keys),
            "reloaded" => typed(fields).map(|KeyCount { keys }| ReplyLine::Reloaded { keys }),
            "error" => Ok(ReplyLine::Error(error_of(&fields))),
            _ => return Ok(ReplyLine::Other { kind, fields }),
        };
        line.map_err(|err| not_a_reply(&format!("is a {kind:?} reply with a bad field ({err})")))
    }
}

/// What one reply line says, typed: a variant per reply type of the wire format, holding
/// the fields the format documents for it.
///
/// Read as the format asks clients to read: fields this client does not know are ignored;
/// a documented field the line leaves out reads as zero, empty or none (an older daemon may
/// not send a newer field; `job` is the one field a line must have where it is documented);
/// and a reply type this client does not know is kept whole as [`ReplyLine::Other`]. Values
/// the format says may grow (error codes, ops, job states, key kinds and states) are kept as
/// the daemon's strings, except the `error` reply's code, which becomes a [`Code`].
#[derive(Clone, Debug, PartialEq)]
pub enum ReplyLine {
    /// `pong`: the daemon is alive.
    Pong(Pong),
    /// `accepted`: a file job was queued under `job`.
    Accepted { job: JobId },
    /// `progress`: how far a recursive job has got.
    Progress(Progress),
    /// `done`: a file job finished (some files of a tree job may have failed).
    Done(Done),
    /// `status`: one job's state and progress.
    Status(JobEntry),
    /// `cancelled`: the job was cancelled.
    Cancelled { job: JobId },
    /// `jobs`: the jobs the daemon knows, as the caller lists them.
    Jobs(Vec<JobEntry>),
    /// `stats`: per-shard counters.
    Stats(Vec<ShardStats>),
    /// `keys`: the key ring's names, ids, kinds and states.
    Keys(KeyList),
    /// `reloaded`: the key ring was read again and now holds `keys` keys.
    Reloaded { keys: u64 },
    /// `error`: the request, or the job it started, failed. A code this client does not
    /// know becomes `internal`, with the daemon's code kept in the message ([`Reply::error`]).
    Error(Error),
    /// A reply type this client does not know: its `"type"` and its other fields.
    Other {
        kind: String,
        fields: Map<String, Value>,
    },
}

impl ReplyLine {
    /// The reply type as it appears on the wire: `pong`, `done`, ...
    pub fn kind(&self) -> &str {
        match self {
            ReplyLine::Pong(_) => "pong",
            ReplyLine::Accepted { .. } => "accepted",
            ReplyLine::Progress(_) => "progress",
            ReplyLine::Done(_) => "done",
            ReplyLine::Status(_) => "status",
            ReplyLine::Cancelled { .. } => "cancelled",
            ReplyLine::Jobs(_) => "jobs",
            ReplyLine::Stats(_) => "stats",
            ReplyLine::Keys(_) => "keys",
            ReplyLine::Reloaded { .. } => "reloaded",
            ReplyLine::Error(_) => "error",
            ReplyLine::Other { kind, .. } => kind,
        }
    }
}

/// A `pong` line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Pong {
    pub version: String,
    pub shards: u64,
    /// `uring` or `sync`.
    pub backend: String,
}

/// A `done` line: what the job did, with at most
/// [`MAX_FAILURES_REPORTED`](super::MAX_FAILURES_REPORTED) failures and skipped entries
/// listed and the rest counted.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Done {
    pub job: JobId,
    #[serde(default)]
    pub bytes_in: u64,
    #[serde(default)]
    pub bytes_out: u64,
    #[serde(default)]
    pub micros: u64,
    #[serde(default)]
    pub files_ok: u64,
    #[serde(default)]
    pub files_failed: u64,
    #[serde(default)]
    pub files_skipped: u64,
    #[serde(default)]
    pub failures: Vec<FailedFile>,
    /// Failed files not listed in `failures` (absent from the line when none were left out).
    #[serde(default)]
    pub failures_omitted: u64,
    #[serde(default)]
    pub skipped: Vec<Skipped>,
    /// Skipped entries not listed in `skipped`.
    #[serde(default)]
    pub skipped_omitted: u64,
}

/// One file of a `done` line's `failures`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct FailedFile {
    pub path: PathBuf,
    /// The error code as the daemon spelled it: the list may grow, so it is not a [`Code`]
    /// until the caller decides what an unknown one means.
    pub code: String,
    pub message: String,
}

/// One job as a `status` line, or an entry of a `jobs` line, shows it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct JobEntry {
    pub job: JobId,
    /// `queued`, `running`, `done`, `failed` or `cancelled`.
    #[serde(default)]
    pub state: String,
    /// `encrypt`, `decrypt` or `rewrap`.
    #[serde(default)]
    pub op: String,
    #[serde(default)]
    pub input: PathBuf,
    #[serde(default)]
    pub output: PathBuf,
    #[serde(default)]
    pub progress: ByteCounts,
    /// Why a `failed` or `cancelled` job ended (absent otherwise, and from older daemons).
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

/// The `progress` object of a job entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ByteCounts {
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// A `keys` line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct KeyList {
    /// The name of the key new files are sealed under, if the ring has one.
    pub default: Option<String>,
    pub keys: Vec<KeyEntry>,
}

/// One key of a `keys` line: never key bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct KeyEntry {
    pub name: String,
    /// 32 hex digits for ringcrypt keys; none for passphrases.
    pub id: Option<String>,
    /// `ringcrypt` or `openssl`.
    pub kind: String,
    /// `active`, `decrypt-only` or `retired`.
    pub state: String,
}

/// The fields of the reply types whose variant holds one field.
#[derive(Deserialize)]
struct JobField {
    job: JobId,
}

#[derive(Deserialize)]
struct JobsField {
    #[serde(default)]
    jobs: Vec<JobEntry>,
}

#[derive(Deserialize)]
struct ShardsField {
    #[serde(default)]
    shards: Vec<ShardStats>,
}

#[derive(Deserialize)]
struct KeyCount {
    #[serde(default)]
    keys: u64,
}

/// A reply's fields read as `T` (unknown fields are passed over).
fn typed<T: DeserializeOwned>(fields: Map<String, Value>) -> Result<T, serde_json::Error> {
    serde_json::from_value(Value::Object(fields))
}

/// The error an `error` reply's fields carry; see [`Reply::error`].
fn error_of(fields: &Map<String, Value>) -> Error {
    let code_text = fields.get("code").and_then(Value::as_str).unwrap_or("");
    let message = fields
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("the daemon gave no message");
    match Code::parse(code_text) {
        Some(code) => Error::new(code, message),
        None => Error::new(
            Code::Internal,
            format!("{message} (error code {})", quote(code_text)),
        ),
    }
}

/// A line that is not a reply this client can read: something else is listening on the
/// socket, or the daemon is broken.
fn not_a_reply(why: &str) -> Error {
    Error::new(
        Code::Internal,
        format!("the reply from the socket {why}; is ringcryptd listening there?"),
    )
}

/// Parses one reply line (its newline may be left on). A line that is not a JSON object with
/// a string `"type"` is `internal`: the daemon never sends one, so something else is
/// listening on the socket or the daemon is broken.
pub fn parse_reply(line: &str) -> Result<Reply, Error> {
    let value: Value = serde_json::from_str(line)
        .map_err(|err| not_a_reply(&format!("is not valid JSON ({err})")))?;
    let Value::Object(mut fields) = value else {
        return Err(not_a_reply(&format!(
            "is {}, not a JSON object",
            describe(&value)
        )));
    };
    let kind = match fields.remove("type") {
        Some(Value::String(kind)) => kind,
        _ => return Err(not_a_reply("has no \"type\" string")),
    };
    let id = fields.remove("id");
    Ok(Reply { kind, id, fields })
}
