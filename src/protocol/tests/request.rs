//! Request parsing: every op and field, the id rules, malformed lines, path normalization,
//! the line limit, job ids, and the recycled path buffers.
//!
//! Not here: replies and the client's encoding (`reply`).

use super::*;

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
    for op in FileOp::ALL.into_iter().filter(|op| op.writes()) {
        let line = format!(r#"{{"op":"{op}","input":"/d/in","output":"/d/out"}}"#);
        assert_eq!(ok(&line), Request::File(spec(op, "/d/in", "/d/out")));
    }
    // Verify names no output: its spec's output is its input.
    let line = r#"{"op":"verify","input":"/d//in/"}"#;
    assert_eq!(
        ok(line),
        Request::File(spec(FileOp::Verify, "/d/in", "/d/in"))
    );
    let line = r#"{"op":"verify","input":"/d/in","recursive":true,"wait":false}"#;
    let mut want = spec(FileOp::Verify, "/d/in", "/d/in");
    want.recursive = true;
    want.wait = false;
    assert_eq!(ok(line), Request::File(want));
    for extra in [
        r#""output":"/x""#,
        r#""key":"k""#,
        r#""overwrite":true"#,
        r#""skip_existing":true"#,
        r#""fds":true"#,
        r#""format":"ringcrypt""#,
    ] {
        let e = err(&format!(r#"{{"op":"verify","input":"/d/in",{extra}}}"#));
        assert_eq!(e.code, Code::BadRequest, "{extra}");
        assert!(
            e.message
                .contains(r#"verify takes "op", "id", "input", "recursive", "wait""#),
            "{extra}: {}",
            e.message
        );
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

    let line = r#"{"op":"rewrap","input":"/d/in","output":"/d/out","progress":true}"#;
    let mut want = spec(FileOp::Rewrap, "/d/in", "/d/out");
    want.progress = true;
    assert_eq!(ok(line), Request::File(want));
    let e = err(r#"{"op":"rewrap","input":"/d/in","output":"/d/out","progress":1}"#);
    assert_eq!(e.code, Code::BadRequest);

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

/// `partition` is `"I/N"` on a tree; anything else is refused with the reason.
#[test]
fn partitions_parse_on_trees_only() {
    // The ops that write a tree: a verify writes nothing and takes no partition.
    for op in FileOp::ALL.into_iter().filter(|op| op.writes()) {
        let line = format!(
            r#"{{"op":"{op}","input":"/i","output":"/o","recursive":true,"partition":"1/3"}}"#
        );
        let mut want = spec(op, "/i", "/o");
        want.recursive = true;
        want.partition = Some(crate::tree_rules::Partition::new(1, 3).unwrap());
        assert_eq!(ok(&line), Request::File(want));
    }
    let tree = r#"{"op":"encrypt","input":"/i","output":"/o","recursive":true,"partition":"#;
    for (value, says) in [
        (r#""3/3""#, "0 to 2"),
        (r#""0/0""#, "out of range"),
        (r#""1-3""#, "write I/N"),
        (r#""01/3""#, "write I/N"),
        ("3", "not a number"),
        ("null", "leave the field out"),
    ] {
        let e = err(&format!("{tree}{value}}}"));
        assert_eq!(e.code, Code::BadRequest, "{value}");
        assert!(
            e.message.contains("\"partition\"") && e.message.contains(says),
            "{value}: {}",
            e.message
        );
    }
    let e = err(r#"{"op":"encrypt","input":"/i","output":"/o","partition":"0/2"}"#);
    assert!(
        e.message.contains("needs \"recursive\": true"),
        "{}",
        e.message
    );
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

#[test]
fn batches_parse_with_their_options_and_round_trip() {
    let line = br#"{"op":"encrypt","id":4,"inputs":["/a//x","/b/./y"],"outputs":["/o/x.rc","/o/y.rc"],"key":"k2","skip_existing":true,"progress":true}"#;
    let parsed = parse_request(line);
    let Ok(Request::Batch(batch)) = &parsed.request else {
        panic!("a good batch: {parsed:?}");
    };
    assert_eq!(batch.inputs, [PathBuf::from("/a/x"), PathBuf::from("/b/y")]);
    assert_eq!(
        batch.outputs,
        [PathBuf::from("/o/x.rc"), PathBuf::from("/o/y.rc")]
    );
    // The shared options, on a spec that names the first file.
    let mut want = spec(FileOp::Encrypt, "/a/x", "/o/x.rc");
    want.key = Some("k2".into());
    want.skip_existing = true;
    want.progress = true;
    assert_eq!(batch.spec, want);
    // The client's encoding parses back to the same request.
    let again = parse_request(
        encode_request(parsed.id.as_ref(), batch_request(&parsed))
            .trim_end()
            .as_bytes(),
    );
    assert_eq!(again, parsed);

    // verify names no outputs: they are its inputs, never written.
    let parsed = parse_request(br#"{"op":"verify","inputs":["/s/a.rcrypt"],"wait":false}"#);
    let Ok(Request::Batch(batch)) = &parsed.request else {
        panic!("a good verify batch: {parsed:?}");
    };
    assert_eq!(batch.outputs, batch.inputs);
    assert!(!batch.spec.wait);
    let again = parse_request(
        encode_request(None, batch_request(&parsed))
            .trim_end()
            .as_bytes(),
    );
    assert_eq!(again, parsed);
    // Names with characters JSON escapes survive the round trip.
    let parsed = parse_request(
        "{\"op\":\"decrypt\",\"inputs\":[\"/a \\\"q\\\" \\u00e9\"],\"outputs\":[\"/b\\\\c\"]}"
            .as_bytes(),
    );
    let Ok(Request::Batch(batch)) = &parsed.request else {
        panic!("a good batch: {parsed:?}");
    };
    assert_eq!(batch.inputs, [PathBuf::from("/a \"q\" é")]);
    assert_eq!(batch.outputs, [PathBuf::from("/b\\c")]);
    let again = parse_request(
        encode_request(None, batch_request(&parsed))
            .trim_end()
            .as_bytes(),
    );
    assert_eq!(again, parsed);
}

fn batch_request(parsed: &Parsed) -> &Request {
    parsed.request.as_ref().expect("a good request")
}

#[test]
fn batch_errors_name_the_field_and_the_file() {
    let cases: [(&[u8], &str); 9] = [
        (
            br#"{"op":"encrypt","inputs":[],"outputs":[]}"#,
            "field \"inputs\" is an empty array",
        ),
        (
            br#"{"op":"encrypt","inputs":["/a"],"outputs":["/b","/c"]}"#,
            "names 1 files and \"outputs\" 2",
        ),
        (
            br#"{"op":"encrypt","inputs":["/a",null],"outputs":["/b","/c"]}"#,
            "one of its elements is not a string",
        ),
        (
            br#"{"op":"encrypt","inputs":{"a":1},"outputs":["/b"]}"#,
            "not an object",
        ),
        (
            br#"{"op":"encrypt","inputs":["/a"]}"#,
            "needs field \"outputs\"",
        ),
        (
            br#"{"op":"encrypt","inputs":["/a","b"],"outputs":["/b","/c"]}"#,
            "field \"inputs[1]\" is a relative path",
        ),
        (
            br#"{"op":"rewrap","inputs":["/a"],"outputs":["/b"],"partition":"0/2"}"#,
            "unknown field \"partition\"",
        ),
        (
            br#"{"op":"verify","inputs":["/a"],"key":"k"}"#,
            "unknown field \"key\"",
        ),
        (
            br#"{"op":"status","inputs":["/a"]}"#,
            "unknown field \"inputs\"",
        ),
    ];
    for (line, says) in cases {
        let parsed = parse_request(line);
        let err = parsed.request.expect_err(&String::from_utf8_lossy(line));
        assert_eq!(err.code, Code::BadRequest, "{err:?}");
        assert!(
            err.message.contains(says),
            "{}: {}",
            String::from_utf8_lossy(line),
            err.message
        );
    }
    // Nested arrays and objects inside the list are read for their syntax, then refused.
    let parsed =
        parse_request(br#"{"op":"encrypt","inputs":[[1,[2]],{"x":[3]}],"outputs":["/b"]}"#);
    assert!(parsed.request.unwrap_err().message.contains("not a string"));
    let parsed = parse_request(br#"{"op":"encrypt","inputs":["/a",[1,}],"outputs":["/b"]}"#);
    assert!(
        parsed
            .request
            .unwrap_err()
            .message
            .contains("not valid JSON")
    );
}
