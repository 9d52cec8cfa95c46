//! The audit log: one record per request with its verdict (accepted, with the job it
//! started, or refused, with the code), one per line that was not a request (unparsable,
//! too long), and one per finished job with its result and error code. Records name who
//! asked (uid and gid from `SO_PEERCRED`), the op and its paths; never key material, and
//! never the text of a line that did not parse.
//!
//! Levels: accepted requests and jobs that ended ok, skipped or cancelled are `info`;
//! refusals, unparsable lines and failed jobs are `warn`, so `--log-level warn` keeps
//! what needs a look.
//!
//! What this room does not do: decide a verdict (`authorize` and the shard do) or write
//! the log (the logging thread does, fed through the `log` facade).

use log::kv::Value;
use log::{Level, Record};

use crate::daemon::creds::Caller;
use crate::daemon::job::JobOutcome;
use crate::daemon::logging::AUDIT;
use crate::daemon::metrics::JobResult;
use crate::error::{Code, Error};
use crate::protocol::{DoneReport, FileJobSpec, JobId, Request};

/// What became of a request.
#[derive(Clone, Copy)]
pub(super) enum Verdict<'e> {
    /// Taken on; for a file request, the job it started or joined.
    Accepted(Option<JobId>),
    Refused(&'e Error),
}

/// At most this many fields in a record.
const MAX_FIELDS: usize = 16;

/// A record's fields, on the stack: building one allocates nothing.
struct Fields<'v> {
    kv: [(&'static str, Value<'v>); MAX_FIELDS],
    len: usize,
}

impl<'v> Fields<'v> {
    fn new() -> Fields<'v> {
        Fields {
            kv: std::array::from_fn(|_| ("", Value::null())),
            len: 0,
        }
    }

    fn add(mut self, key: &'static str, value: Value<'v>) -> Fields<'v> {
        self.kv[self.len] = (key, value);
        self.len += 1;
        self
    }

    fn add_if(self, key: &'static str, value: Option<Value<'v>>) -> Fields<'v> {
        match value {
            Some(value) => self.add(key, value),
            None => self,
        }
    }

    fn who(self, caller: Option<&Caller>) -> Fields<'v> {
        match caller {
            Some(caller) => self
                .add("uid", Value::from(caller.uid))
                .add("gid", Value::from(caller.gid)),
            None => self,
        }
    }

    fn emit(&self, level: Level, message: &str) {
        let fields = &self.kv[..self.len];
        log::logger().log(
            &Record::builder()
                .level(level)
                .target(AUDIT)
                .args(format_args!("{message}"))
                .key_values(&fields)
                .build(),
        );
    }
}

fn enabled(level: Level) -> bool {
    level <= log::max_level()
}

/// A request's record: `accepted` (with `job=` for a file job) or `refused` with `code=`.
pub(super) fn request(caller: &Caller, request: &Request, verdict: Verdict) {
    let job = match request {
        Request::File(spec) => return request_of_spec(caller, spec, verdict),
        Request::Batch(batch) => {
            return request_of_batch(caller, &batch.spec, batch.inputs.len() as u64, verdict);
        }
        Request::Status { job } | Request::Cancel { job } => Some(job),
        _ => None,
    };
    let Some((level, word, code)) = judged(verdict) else {
        return;
    };
    Fields::new()
        .who(Some(caller))
        .add("op", Value::from(request.op()))
        .add_if("job", job.map(Value::from_display))
        .add_if("code", code.map(Value::from))
        .emit(level, word);
}

/// A file request's record: as [`request`], with its flags and paths.
pub(super) fn request_of_spec(caller: &Caller, spec: &FileJobSpec, verdict: Verdict) {
    request_of_files(caller, spec, None, verdict);
}

/// A batch's record: as [`request_of_spec`], with the number of files (`files=`) where a
/// single request has its flags; its `input` and `output` are its first file's.
pub(super) fn request_of_batch(caller: &Caller, spec: &FileJobSpec, files: u64, verdict: Verdict) {
    request_of_files(caller, spec, Some(files), verdict);
}

fn request_of_files(caller: &Caller, spec: &FileJobSpec, files: Option<u64>, verdict: Verdict) {
    let Some((level, word, code)) = judged(verdict) else {
        return;
    };
    let job = match verdict {
        Verdict::Accepted(job) => job,
        Verdict::Refused(_) => None,
    };
    // Passed descriptors: the paths are the caller's names for them.
    let (input, output) = (spec.input.display(), spec.output.display());
    let mut fields = Fields::new()
        .who(Some(caller))
        .add("op", Value::from(spec.op.as_str()));
    fields = match files {
        Some(files) => fields.add("files", Value::from(files)),
        None => fields
            .add("recursive", Value::from(spec.recursive))
            .add("fds", Value::from(spec.fds)),
    };
    fields
        .add("input", Value::from_display(&input))
        .add("output", Value::from_display(&output))
        .add_if(
            "partition",
            spec.partition.as_ref().map(Value::from_display),
        )
        .add_if("job", job.as_ref().map(Value::from_display))
        .add_if("code", code.map(Value::from))
        .emit(level, word);
}

/// A verdict's level, word and code; None when that level is not logged.
fn judged(verdict: Verdict) -> Option<(Level, &'static str, Option<&'static str>)> {
    let judged = match verdict {
        Verdict::Accepted(_) => (Level::Info, "accepted", None),
        Verdict::Refused(err) => (Level::Warn, "refused", Some(err.code.as_str())),
    };
    enabled(judged.0).then_some(judged)
}

/// A line that was not a request: not JSON, not an object, a bad field, an unknown op, or
/// longer than the limit (its size then unknown); also descriptors no request took. Its
/// text is not logged, only its size.
pub(super) fn unparsable(caller: &Caller, err: &Error, bytes: Option<usize>) {
    if !enabled(Level::Warn) {
        return;
    }
    Fields::new()
        .who(Some(caller))
        .add("code", Value::from(err.code.as_str()))
        .add_if("bytes", bytes.map(Value::from))
        .emit(Level::Warn, "unparsable");
}

/// How a file job ended, for its record.
pub(super) struct Ended<'a> {
    pub id: JobId,
    pub spec: &'a FileJobSpec,
    /// The tree the file belongs to, if any.
    pub tree: Option<JobId>,
    pub outcome: &'a Result<JobOutcome, Error>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub micros: u64,
}

/// A file job's record: `finished` with `result=ok|skipped|failed|cancelled` and, unless
/// ok, the error's code and message.
pub(super) fn job_ended(ended: &Ended) {
    let (level, result, error) = match ended.outcome {
        Ok(done) if done.skipped => (Level::Info, "skipped", None),
        Ok(_) => (Level::Info, "ok", None),
        Err(err) if err.code == Code::Cancelled => (Level::Info, "cancelled", Some(err)),
        Err(err) => (Level::Warn, "failed", Some(err)),
    };
    if !enabled(level) {
        return;
    }
    let spec = ended.spec;
    let (input, output) = (spec.input.display(), spec.output.display());
    Fields::new()
        .add("job", Value::from_display(&ended.id))
        .add_if("tree", ended.tree.as_ref().map(Value::from_display))
        .who(spec.caller.as_deref())
        .add("op", Value::from(spec.op.as_str()))
        .add("fds", Value::from(spec.fds))
        .add("input", Value::from_display(&input))
        .add("output", Value::from_display(&output))
        .add("result", Value::from(result))
        .add_if("code", error.map(|e| Value::from(e.code.as_str())))
        .add("bytes_in", Value::from(ended.bytes_in))
        .add("bytes_out", Value::from(ended.bytes_out))
        .add("micros", Value::from(ended.micros))
        .add_if("message", error.map(|e| Value::from(e.message.as_str())))
        .emit(level, "finished");
}

/// A tree job's record: `finished` with the tree's result and file counts; a failed tree
/// carries the code and message its status shows. A batch's says `batch=true` where a
/// tree's says `recursive=true`, and names its first file.
pub(super) fn tree_ended(
    spec: &FileJobSpec,
    batch: bool,
    result: JobResult,
    report: &DoneReport,
    error: Option<&Error>,
) {
    let level = match result {
        JobResult::Failed => Level::Warn,
        JobResult::Ok | JobResult::Cancelled => Level::Info,
    };
    if !enabled(level) {
        return;
    }
    let (input, output) = (spec.input.display(), spec.output.display());
    Fields::new()
        .add("job", Value::from_display(&report.job))
        .who(spec.caller.as_deref())
        .add("op", Value::from(spec.op.as_str()))
        .add(if batch { "batch" } else { "recursive" }, Value::from(true))
        .add("input", Value::from_display(&input))
        .add("output", Value::from_display(&output))
        .add_if(
            "partition",
            spec.partition.as_ref().map(Value::from_display),
        )
        .add("result", Value::from(result.as_str()))
        .add_if("code", error.map(|e| Value::from(e.code.as_str())))
        .add("files_ok", Value::from(report.files_ok))
        .add("files_failed", Value::from(report.files_failed))
        .add("files_skipped", Value::from(report.files_skipped))
        .add("bytes_in", Value::from(report.bytes_in))
        .add("bytes_out", Value::from(report.bytes_out))
        .add("micros", Value::from(report.micros))
        .add_if("message", error.map(|e| Value::from(e.message.as_str())))
        .emit(level, "finished");
}
