//! Request lines, the daemon's side: [`parse_request`] and [`parse_request_reusing`] turn one
//! line (already cut at [`MAX_REQUEST_LINE_BYTES`]) into a [`Parsed`]: the id, and the request
//! or the error to send back. Every rule of the request half of the wire format is enforced
//! here, in the order [`parse_request`] lists: length, JSON syntax, `id`, duplicate fields,
//! `op`, then each op's fields. Paths are checked and normalized lexically
//! ([`normalize_path`]), into buffers recycled through [`SparePaths`] so the daemon's steady
//! state parses without allocating.
//!
//! The line's JSON is first read into per-field slots by `raw_fields`.
//!
//! It does **not** define the request types ([`Request`], [`FileJobSpec`], [`JobId`] live in
//! the parent module, with the format's documentation), encode requests (the client's side,
//! `client`), read the socket, or resolve paths against the file system or the allowed roots
//! (the job does that with `openat2`).

use std::path::PathBuf;

use super::raw_fields::{Field, RawFields, TopLevel, Val};

use super::Format;
use super::{
    BatchSpec, FileJobSpec, FileOp, JobId, MAX_KEY_NAME_BYTES, MAX_PATH_BYTES,
    MAX_REQUEST_LINE_BYTES, OPS, Request, RequestId, quote,
};
use crate::error::{Code, Error};
use crate::tree_rules::Partition;

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
    if fields.fields.contains(Field::Inputs)
        && let Some(file_op) = FileOp::parse(&op)
    {
        return parse_batch(file_op, &mut fields).map(|batch| Request::Batch(Box::new(batch)));
    }
    if op == "verify" {
        return parse_verify(&mut fields, spares).map(Request::File);
    }
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
const FILE_FIELDS: [&str; 11] = [
    "input",
    "output",
    "key",
    "format",
    "recursive",
    "overwrite",
    "skip_existing",
    "wait",
    "fds",
    "partition",
    "progress",
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

/// The fields of `verify`, besides `op` and `id`: it reads its input and writes nothing, so
/// it has no output and none of the output's options.
const VERIFY_FIELDS: [&str; 4] = ["input", "recursive", "wait", "progress"];

/// `verify`: a spec whose `output` is its `input`, never written.
fn parse_verify(fields: &mut Fields, spares: &mut SparePaths) -> Result<FileJobSpec, Error> {
    fields.only(&VERIFY_FIELDS)?;
    let input = fields.path(Field::Input, spares)?;
    let mut output = spares.take(input.as_os_str().len());
    output.push(&input);
    let mut spec = FileJobSpec::new(FileOp::Verify, input, output);
    let options = fields.flag(Field::Recursive, false).and_then(|recursive| {
        let wait = fields.flag(Field::Wait, true)?;
        Ok((recursive, wait, fields.flag(Field::Progress, false)?))
    });
    match options {
        Ok((recursive, wait, progress)) => {
            spec.recursive = recursive;
            spec.wait = wait;
            spec.progress = progress;
            Ok(spec)
        }
        Err(err) => {
            spares.give(spec.input);
            spares.give(spec.output);
            Err(err)
        }
    }
}

/// The fields of a batch of `encrypt`, `decrypt` or `rewrap` (`inputs` given), besides `op`
/// and `id`: the files' paths, and the options they share. No `recursive`, `fds` or
/// `partition`: a batch names its files, by path.
const BATCH_FIELDS: [&str; 8] = [
    "inputs",
    "outputs",
    "key",
    "format",
    "overwrite",
    "skip_existing",
    "wait",
    "progress",
];

/// The fields of a batch of `verify`, besides `op` and `id`.
const VERIFY_BATCH_FIELDS: [&str; 3] = ["inputs", "wait", "progress"];

/// A batch (`inputs`, `outputs`): every path checked as a single file's, the counts equal,
/// then the shared options. The first bad path refuses the whole request, naming its index.
fn parse_batch(op: FileOp, fields: &mut Fields) -> Result<BatchSpec, Error> {
    if op != FileOp::Encrypt && fields.fields.contains(Field::Format) {
        return Err(bad(format!(
            "field \"format\" applies to encrypt only; {op} reads the format from the input \
             file, so leave the field out"
        )));
    }
    if op.writes() {
        fields.only(&BATCH_FIELDS)?;
    } else {
        fields.only(&VERIFY_BATCH_FIELDS)?;
    }
    let inputs = fields.paths(Field::Inputs)?;
    let outputs = if op.writes() {
        let outputs = fields.paths(Field::Outputs)?;
        if outputs.len() != inputs.len() {
            return Err(bad(format!(
                "field \"inputs\" names {} files and \"outputs\" {}; give one output per \
                 input, in the same order",
                inputs.len(),
                outputs.len()
            )));
        }
        outputs
    } else {
        inputs.clone()
    };
    let mut spec = FileJobSpec::new(op, inputs[0].clone(), outputs[0].clone());
    if op.writes() {
        file_options(&mut spec, fields)?;
    } else {
        spec.wait = fields.flag(Field::Wait, true)?;
        spec.progress = fields.flag(Field::Progress, false)?;
    }
    Ok(BatchSpec {
        spec,
        inputs,
        outputs,
    })
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
    let progress = fields.flag(Field::Progress, false)?;
    if fds && (recursive || skip_existing) {
        return Err(bad(
            "field \"fds\" is for single files: a tree (\"recursive\") is walked by the \
             daemon from its path, and \"skip_existing\" needs the output's name, so send \
             those jobs by path",
        ));
    }
    let partition = fields.partition()?;
    if partition.is_some() && !recursive {
        return Err(bad(
            "field \"partition\" splits a tree; it needs \"recursive\": true (a single \
             file is one job, on one host)",
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
    spec.partition = partition;
    spec.progress = progress;
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

    /// A batch's list of paths: a non-empty array of strings, each an absolute path as
    /// [`Fields::path`] takes one; an error names the first bad one by its index.
    fn paths(&mut self, field: Field) -> Result<Vec<PathBuf>, Error> {
        const EXPECTED: &str = "a non-empty array of strings: absolute paths";
        let name = field.name();
        let texts = match self.required(field, EXPECTED)? {
            Val::Strings(texts) if !texts.is_empty() => texts,
            Val::Strings(_) => {
                return Err(bad(format!(
                    "field \"{name}\" is an empty array; a batch names at least one file"
                )));
            }
            Val::Array => {
                return Err(bad(format!(
                    "field \"{name}\" must be {EXPECTED}; one of its elements is not a string"
                )));
            }
            other => return Err(mistyped(name, EXPECTED, &other)),
        };
        let mut paths = Vec::with_capacity(texts.len());
        for (index, text) in texts.iter().enumerate() {
            let mut path = PathBuf::with_capacity(text.len());
            // The element's name is written only into an error, never per path.
            normalize_path(name, text, &mut path).map_err(|err| {
                let field = format!("field \"{name}\"");
                bad(err
                    .message
                    .replacen(&field, &format!("field \"{name}[{index}]\""), 1))
            })?;
            paths.push(path);
        }
        Ok(paths)
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

    /// `partition`: `"I/N"` (docs/fleet.md), checked by [`Partition::parse`].
    fn partition(&mut self) -> Result<Option<Partition>, Error> {
        const EXPECTED: &str = "a string \"I/N\", e.g. \"0/3\"";
        match self.optional(Field::Partition, EXPECTED)? {
            None => Ok(None),
            Some(Val::Str(text)) => Partition::parse(&text)
                .map(Some)
                .map_err(|why| bad(format!("field \"partition\": {why}"))),
            Some(other) => Err(mistyped("partition", EXPECTED, &other)),
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
