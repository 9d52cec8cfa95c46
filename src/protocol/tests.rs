//! The protocol's unit tests, by side: `request` (parsing request lines, paths, job ids),
//! `reply` (writing reply lines and reading them back, encoding requests), `client` (the
//! client's typed view of reply lines); the properties over arbitrary input, which cross the
//! sides, are here. Helpers every side uses are here too.
//!
//! Not here: anything with a socket or a daemon (the integration tests under `tests/`).

mod client;
mod reply;
mod request;

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use serde_json::{Map, Value};

use super::*;

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

const JOB: JobId = JobId { shard: 1, seq: 42 };

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
            "partition",
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
            if op == FileOp::Verify {
                // Verify takes only `recursive` and `wait`; its output is its input.
                spec.output = spec.input.clone();
                spec.key = None;
                (spec.overwrite, spec.skip_existing) = (false, false);
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
