//! Reply lines, the daemon's side: one encoder per reply type of the wire format. Each
//! `write_*` function writes its line straight into a caller's buffer (on the daemon, a
//! connection's output buffer), so a reply costs no allocation of its own; the
//! `String`-returning functions ([`done`], [`status`], ...) are the same encoders over a fresh
//! buffer, for callers that want a line. [`Obj`], the writer underneath, lays an object's
//! fields out in the order they are added (`"type"` first, then `"id"`) and also serves the
//! client's request encoder.
//!
//! It does **not** define what replies carry ([`DoneReport`], [`Progress`], [`JobInfo`] and
//! the rest live in the parent module), decide which reply a request gets (the shard does),
//! or read replies (`client`).

use std::path::Path;

use serde::Serialize;

use super::{
    DoneReport, JobId, JobInfo, KeyInfo, MAX_FAILURES_REPORTED, Progress, RequestId, ShardStats,
};
use crate::error::Error;

/// Writes a JSON object into a caller's buffer, with its fields in the order they are added
/// (serde_json's `Map` is sorted, and the wire promises `"type"` first). Keys are the
/// protocol's own names.
pub(super) struct Obj<'a> {
    out: &'a mut Vec<u8>,
    empty: bool,
}

impl<'a> Obj<'a> {
    pub(super) fn new(out: &'a mut Vec<u8>) -> Obj<'a> {
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
    pub(super) fn key(&mut self, key: &str) -> &mut Vec<u8> {
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

    pub(super) fn str(&mut self, key: &str, value: &str) -> &mut Obj<'a> {
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

    pub(super) fn bool(&mut self, key: &str, value: bool) -> &mut Obj<'a> {
        self.raw(key, if value { "true" } else { "false" })
    }

    /// A path as a string; a name that is not UTF-8 is shown lossily (U+FFFD).
    pub(super) fn path(&mut self, key: &str, value: &Path) -> &mut Obj<'a> {
        self.str(key, &value.to_string_lossy())
    }

    /// A job id as its string, `"<shard>-<seq>"`.
    pub(super) fn job(&mut self, key: &str, job: JobId) -> &mut Obj<'a> {
        let out = self.key(key);
        out.push(b'"');
        write_u64(out, u64::from(job.shard));
        out.push(b'-');
        write_u64(out, job.seq);
        out.push(b'"');
        self
    }

    /// An array field whose elements `element` writes, each into the buffer it is given.
    pub(super) fn array<T>(
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
    pub(super) fn line(&mut self) {
        self.out.extend_from_slice(b"}\n");
    }
}

/// Writes JSON text for a string, a scalar value or an object key.
pub(super) fn write_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
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
pub(super) fn json<T: Serialize + ?Sized>(value: &T) -> String {
    line_of(|out| write_json(out, value))
}

/// What `encode` writes, as a `String`.
pub(super) fn line_of(encode: impl FnOnce(&mut Vec<u8>)) -> String {
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

/// How one file of a batch ended, for its `file` line.
pub enum BatchFileEnd<'a> {
    Done {
        bytes_in: u64,
        bytes_out: u64,
        micros: u64,
    },
    /// `skip_existing`: the output exists and verifies.
    Skipped,
    Failed(&'a Error),
}

/// `file`: file `index` (its place in the request's `inputs`) of batch `job` ended.
pub fn write_file_end(
    out: &mut Vec<u8>,
    id: Option<&RequestId>,
    job: JobId,
    index: usize,
    end: &BatchFileEnd,
) {
    let mut obj = Obj::reply(out, "file", id);
    obj.job("job", job).u64("index", index as u64);
    match end {
        BatchFileEnd::Done {
            bytes_in,
            bytes_out,
            micros,
        } => obj
            .u64("bytes_in", *bytes_in)
            .u64("bytes_out", *bytes_out)
            .u64("micros", *micros),
        BatchFileEnd::Skipped => obj.str("skipped", crate::tree_rules::REASON_EXISTS),
        BatchFileEnd::Failed(err) => obj
            .str("code", err.code.as_str())
            .str("message", &err.message),
    }
    .line();
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
        .path("output", &info.output);
    job_error(&mut obj, info);
    obj.line();
}

/// The `code` and `message` of a job that failed or was cancelled.
fn job_error(obj: &mut Obj, info: &JobInfo) {
    if let Some(err) = &info.error {
        obj.str("code", err.code.as_str())
            .str("message", &err.message);
    }
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
                job_error(&mut obj, info);
                obj.finish();
            })
            .line()
    })
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
