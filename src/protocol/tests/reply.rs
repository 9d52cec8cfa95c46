//! Reply lines: their framing and layout, ids echoed exactly, the `done` caps, and the
//! client's side reading them back; requests encoded by the client parse back to themselves.
//!
//! Not here: request parsing on its own (`request`).

use super::*;

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
        error: (state == JobState::Failed).then(|| Error::new(Code::AuthFailed, "/d/a: tampered")),
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
            let failed = state == JobState::Failed;
            assert_eq!(entry.get("code").is_some(), failed, "{entry}");
            assert_eq!(entry.get("message").is_some(), failed, "{entry}");
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
    // A failed job says why, after the fact.
    assert_eq!(
        status(None, &info(JobState::Failed)),
        "{\"type\":\"status\",\"job\":\"1-42\",\"state\":\"failed\",\
         \"progress\":{\"bytes_done\":10,\"bytes_total\":20},\"op\":\"decrypt\",\
         \"input\":\"/d/a \\\"quoted\\\"\\n.rcrypt\",\"output\":\"/d/a\",\
         \"code\":\"auth_failed\",\"message\":\"/d/a: tampered\"}\n"
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
    // Verify: its output is its input, and it takes only `recursive` and `wait`.
    let mut verify = spec(FileOp::Verify, "/d/a b", "/d/a b");
    requests.push(Request::File(verify.clone()));
    verify.recursive = true;
    verify.wait = false;
    verify.progress = true;
    requests.push(Request::File(verify));
    let mut progress = spec(FileOp::Encrypt, "/in", "/out");
    progress.progress = true;
    requests.push(Request::File(progress));
    for op in FileOp::ALL.into_iter().filter(|op| op.writes()) {
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
        full.partition = Some(crate::tree_rules::Partition::new(2, 3).unwrap());
        requests.push(Request::File(full.clone()));
        full.partition = None;
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
