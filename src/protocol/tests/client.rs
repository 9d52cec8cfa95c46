//! The client's typed view of reply lines: every line the daemon writes reads back as its
//! variant with the values it was written from, and lines from a newer or older daemon
//! (fields or types this client does not know, fields it leaves out) still read.
//!
//! Not here: the framing of reply lines and the untyped [`Reply`] (`reply`).

use super::*;

/// A line as the client reads it: parsed once, then typed.
fn line(text: &str) -> ReplyLine {
    parse_reply(text).unwrap().into_line().unwrap()
}

fn entry(state: JobState) -> JobInfo {
    JobInfo {
        job: JOB,
        op: FileOp::Rewrap,
        input: PathBuf::from("/d/in \"q\""),
        output: PathBuf::from("/d/out"),
        state,
        bytes_done: 5,
        bytes_total: 9,
        error: (state == JobState::Failed).then(|| {
            Error::new(
                Code::AuthFailed,
                "/d/in \"q\": the input failed authentication",
            )
        }),
    }
}

#[test]
fn every_reply_reads_back_as_its_variant() {
    let id = Some(RequestId::from("r"));
    let id = id.as_ref();
    assert_eq!(
        line(&pong(id, "0.1.0", 8, "uring")),
        ReplyLine::Pong(Pong {
            version: "0.1.0".into(),
            shards: 8,
            backend: "uring".into(),
        })
    );
    assert_eq!(line(&accepted(id, JOB)), ReplyLine::Accepted { job: JOB });
    assert_eq!(line(&cancelled(id, JOB)), ReplyLine::Cancelled { job: JOB });
    let ReplyLine::Progress(mut p) = line(r#"{"type":"progress","job":"1-42"}"#) else {
        panic!("a progress line");
    };
    (p.files_done, p.files_total, p.bytes_done) = (1, 2, 3);
    (p.bytes_total, p.rate_bytes_per_sec) = (u64::MAX, 5);
    for totals_final in [false, true] {
        p.totals_final = totals_final;
        assert_eq!(line(&progress(id, &p)), ReplyLine::Progress(p.clone()));
    }
    let want = |info: &JobInfo| JobEntry {
        job: info.job,
        state: info.state.as_str().into(),
        op: info.op.as_str().into(),
        input: info.input.clone(),
        output: info.output.clone(),
        progress: ByteCounts {
            bytes_done: info.bytes_done,
            bytes_total: info.bytes_total,
        },
        code: info.error.as_ref().map(|e| e.code.as_str().to_string()),
        message: info.error.as_ref().map(|e| e.message.clone()),
    };
    let all: Vec<JobInfo> = JobState::ALL.into_iter().map(entry).collect();
    for info in &all {
        assert_eq!(line(&status(id, info)), ReplyLine::Status(want(info)));
    }
    assert_eq!(
        line(&jobs(id, &all)),
        ReplyLine::Jobs(all.iter().map(want).collect())
    );
    assert_eq!(line(&jobs(id, &[])), ReplyLine::Jobs(vec![]));
    let shards = [
        ShardStats {
            shard: 0,
            queued: 1,
            running: 2,
            jobs_done: 3,
            bytes_in: 4,
            bytes_out: 5,
        },
        ShardStats {
            shard: u32::MAX,
            queued: 0,
            running: 0,
            jobs_done: u64::MAX,
            bytes_in: 0,
            bytes_out: 0,
        },
    ];
    assert_eq!(line(&stats(id, &shards)), ReplyLine::Stats(shards.to_vec()));
    let ring = [
        ("prod", Some("00ff".repeat(8)), "ringcrypt", "active"),
        ("legacy", None, "openssl", "decrypt-only"),
    ];
    let infos: Vec<KeyInfo> = ring
        .iter()
        .map(|(name, id, kind, state)| KeyInfo {
            name: name.to_string(),
            id: id.clone(),
            kind,
            state,
        })
        .collect();
    let entries = ring.map(|(name, id, kind, state)| KeyEntry {
        name: name.into(),
        id,
        kind: kind.into(),
        state: state.into(),
    });
    assert_eq!(
        line(&keys(id, Some("prod"), &infos)),
        ReplyLine::Keys(KeyList {
            default: Some("prod".into()),
            keys: entries.to_vec(),
        })
    );
    assert_eq!(
        line(&keys(id, None, &[])),
        ReplyLine::Keys(KeyList::default())
    );
    assert_eq!(line(&reloaded(id, 3)), ReplyLine::Reloaded { keys: 3 });
    for code in Code::ALL {
        let e = Error::new(code, "cannot open /x: \"gone\"\n");
        assert_eq!(line(&error(id, &e)), ReplyLine::Error(e));
    }
}

#[test]
fn done_reads_back_with_its_lists_and_omitted_counts() {
    let report = DoneReport {
        job: JOB,
        bytes_in: 1,
        bytes_out: 2,
        micros: 3,
        files_ok: 4,
        files_failed: 250,
        files_skipped: 101,
        failures: (0..250)
            .map(|i| Failure {
                path: PathBuf::from(format!("/d/f{i}")),
                code: Code::AuthFailed,
                message: format!("/d/f{i}: auth failed"),
            })
            .collect(),
        skipped: (0..101)
            .map(|i| Skipped {
                path: PathBuf::from(format!("/d/l{i}")),
                reason: "symbolic link".into(),
            })
            .collect(),
    };
    let ReplyLine::Done(done) = line(&done(None, &report)) else {
        panic!("a done line");
    };
    assert_eq!(done.job, JOB);
    assert_eq!(
        (done.bytes_in, done.bytes_out, done.micros, done.files_ok),
        (1, 2, 3, 4)
    );
    assert_eq!((done.files_failed, done.files_skipped), (250, 101));
    assert_eq!(done.failures.len(), MAX_FAILURES_REPORTED);
    assert_eq!(
        done.failures[7],
        FailedFile {
            path: PathBuf::from("/d/f7"),
            code: "auth_failed".into(),
            message: "/d/f7: auth failed".into(),
        }
    );
    assert_eq!(done.failures_omitted, 150);
    assert_eq!(done.skipped, report.skipped[..MAX_FAILURES_REPORTED]);
    assert_eq!(done.skipped_omitted, 1);
}

#[test]
fn unknown_fields_and_types_are_passed_over() {
    // A newer daemon's extra fields are ignored, in the line and in its nested objects.
    assert_eq!(
        line(r#"{"type":"accepted","id":1,"job":"2-7","queue":"fast"}"#),
        ReplyLine::Accepted {
            job: JobId { shard: 2, seq: 7 }
        }
    );
    let ReplyLine::Jobs(list) = line(
        r#"{"type":"jobs","jobs":[{"job":"0-1","op":"verify","state":"paused",
            "progress":{"bytes_done":1,"bytes_total":2,"eta":3},"owner":"u"}]}"#,
    ) else {
        panic!("a jobs line");
    };
    // Ops and states may grow: kept as the daemon spelled them.
    assert_eq!(
        (list[0].op.as_str(), list[0].state.as_str()),
        ("verify", "paused")
    );
    assert_eq!(list[0].progress.bytes_total, 2);
    // A newer daemon's reply type is kept whole.
    let other = line(r#"{"type":"future","id":"x","n":[1]}"#);
    assert_eq!(other.kind(), "future");
    let ReplyLine::Other { kind, fields } = other else {
        panic!("an unknown type");
    };
    assert_eq!(kind, "future");
    assert_eq!(Value::Object(fields), serde_json::json!({"n": [1]}));
    // An error code this client does not know is a failure, its code kept in the message.
    let ReplyLine::Error(e) = line(r#"{"type":"error","code":"brand_new","message":"m"}"#) else {
        panic!("an error line");
    };
    assert_eq!(e.code, Code::Internal);
    assert!(e.message.contains("brand_new"), "{}", e.message);
}

#[test]
fn fields_an_older_daemon_leaves_out_read_as_zero() {
    let ReplyLine::Done(done) = line(r#"{"type":"done","job":"1-42","bytes_in":7}"#) else {
        panic!("a done line");
    };
    assert_eq!(done.bytes_in, 7);
    assert_eq!((done.files_failed, done.skipped_omitted), (0, 0));
    assert!(done.failures.is_empty() && done.skipped.is_empty());
    assert_eq!(
        line(r#"{"type":"progress","job":"1-42"}"#),
        ReplyLine::Progress(Progress {
            job: JOB,
            files_done: 0,
            files_total: 0,
            bytes_done: 0,
            bytes_total: 0,
            rate_bytes_per_sec: 0,
            totals_final: false,
        })
    );
    assert_eq!(
        line(r#"{"type":"stats","shards":[{"shard":2}]}"#),
        ReplyLine::Stats(vec![ShardStats {
            shard: 2,
            ..ShardStats::default()
        }])
    );
    let ReplyLine::Error(e) = line(r#"{"type":"error"}"#) else {
        panic!("an error line");
    };
    assert_eq!(e.code, Code::Internal);
    assert!(e.message.contains("no message"), "{}", e.message);
}

#[test]
fn known_types_with_bad_fields_are_refused() {
    for text in [
        r#"{"type":"done","job":"1-42","bytes_in":"7"}"#,
        r#"{"type":"done","bytes_in":7}"#,
        r#"{"type":"accepted","job":"1-042"}"#,
        r#"{"type":"progress","job":"1-42","totals_final":1}"#,
        r#"{"type":"pong","shards":-1}"#,
        r#"{"type":"jobs","jobs":{}}"#,
        r#"{"type":"keys","keys":[{"name":3}]}"#,
        r#"{"type":"reloaded","keys":null}"#,
    ] {
        let e = parse_reply(text).unwrap().into_line().unwrap_err();
        assert_eq!(e.code, Code::Internal, "{text}");
        assert!(e.message.contains("ringcryptd"), "{text}: {}", e.message);
        let kind = parse_reply(text).unwrap().kind;
        assert!(e.message.contains(&format!("{kind:?}")), "{}", e.message);
    }
}

proptest! {
    #[test]
    fn any_fields_under_any_type_never_panic(
        kind in prop::sample::select(vec![
            "pong", "accepted", "progress", "done", "status", "cancelled", "jobs", "stats",
            "keys", "reloaded", "error", "future",
        ]),
        fields in prop::collection::vec((field_name(), json_value()), 0..6),
    ) {
        let mut object: Map<String, Value> = fields.into_iter().collect();
        object.insert("type".into(), Value::from(kind));
        let reply = parse_reply(&Value::Object(object).to_string()).unwrap();
        if let Ok(line) = reply.into_line() {
            prop_assert_eq!(line.kind(), kind);
        }
    }
}
