//! `docs/protocol.schema.json` itself: a valid JSON Schema (draft 2020-12) whose error codes
//! are the daemon's, that accepts every request and reply docs/protocol.md and README.md
//! show and refuses the malformed ones, and that is strict enough to catch a reply with a
//! field missing, mistyped or unknown. (Every reply the rest of the suite receives is checked
//! against it by the harness's client: `tests/support/schema.rs`.)

mod support;

use std::fs;

use serde_json::{Value, json};
use support::schema::{SCHEMA_PATH, reply_errors, schema_document, validator_for};

fn doc(rel: &str) -> String {
    fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/").to_string() + rel).unwrap()
}

#[test]
fn schema_is_valid_draft_2020_12() {
    let schema = schema_document();
    assert_eq!(
        schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
        "{SCHEMA_PATH}"
    );
    if let Err(e) = jsonschema::meta::validate(&schema) {
        panic!("{SCHEMA_PATH} is not a valid JSON Schema: {e}");
    }
    // Both roots compile.
    validator_for("reply");
    validator_for("request");
}

#[test]
fn error_codes_are_the_daemons() {
    let schema = schema_document();
    let listed: Vec<&str> = schema["$defs"]["code"]["enum"]
        .as_array()
        .expect("$defs/code is an enum")
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let daemon: Vec<&str> = ringcrypt::error::Code::ALL
        .iter()
        .map(|c| c.as_str())
        .collect();
    assert_eq!(listed, daemon, "the schema's codes against src/error.rs");
}

/// The JSON after `marker` on each line of `text` that has it.
fn quoted(text: &str, marker: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| l.trim_start().strip_prefix(marker))
        .filter_map(|rest| {
            let rest = rest.trim();
            let end = rest.rfind('}')?;
            serde_json::from_str(&rest[..=end]).ok()
        })
        .collect()
}

#[test]
fn documented_replies_match_the_schema() {
    let mut replies = quoted(&doc("docs/protocol.md"), "← ");
    let shown = replies.len();
    assert!(
        shown >= 30,
        "only {shown} replies found in docs/protocol.md"
    );
    // README's examples: lines that are a whole reply object.
    replies.extend(quoted(&doc("README.md"), ""));
    let replies: Vec<Value> = replies
        .into_iter()
        .filter(|r| r.get("type").is_some())
        .collect();
    assert!(replies.len() > shown, "README.md shows no whole reply line");
    for reply in &replies {
        if let Some(errors) = reply_errors(reply) {
            panic!("a documented reply breaks the schema: {reply}\n{errors}");
        }
    }
}

#[test]
fn documented_requests_match_the_schema() {
    let requests = validator_for("request");
    let text = doc("docs/protocol.md");
    let sent = quoted(&text, "→ ");
    assert!(sent.len() >= 20, "only {} requests found", sent.len());
    // The malformed examples: an unknown op, a misspelt field and the padded line; every
    // other request shown is well-formed (it is refused, if at all, for what it asks, not
    // how).
    let malformed = |r: &Value| {
        r["op"] == "frobnicate" || r.get("overwirte").is_some() || r.get("pad").is_some()
    };
    assert_eq!(sent.iter().filter(|r| malformed(r)).count(), 3);
    for request in &sent {
        let valid = requests.is_valid(request);
        assert_eq!(
            valid,
            !malformed(request),
            "the schema {} {request}",
            if valid { "accepts" } else { "refuses" }
        );
    }
    // And the rules the protocol states, each refused.
    for bad in [
        json!({"op": "encrypt", "input": "/a", "output": "/b", "overwrite": true, "skip_existing": true}),
        json!({"op": "encrypt", "input": "/a", "output": "/b", "fds": true, "recursive": true}),
        json!({"op": "decrypt", "input": "/a", "output": "/b", "format": "ringcrypt"}),
        json!({"op": "encrypt", "input": "a", "output": "/b"}),
        json!({"op": "encrypt", "input": "/a/../b", "output": "/b"}),
        json!({"op": "encrypt", "input": "/a", "output": "/b", "wait": "no"}),
        json!({"op": "encrypt", "input": "/a", "output": "/b", "key": null}),
        json!({"op": "status", "job": "01-1"}),
        json!({"op": "ping", "id": [1]}),
    ] {
        assert!(!requests.is_valid(&bad), "the schema accepts {bad}");
    }
}

#[test]
fn schema_is_strict_about_replies() {
    let done = json!({"type": "done", "id": 7, "job": "0-1", "bytes_in": 5, "bytes_out": 144,
        "micros": 10, "files_ok": 1, "files_failed": 0, "files_skipped": 0, "failures": [],
        "skipped": []});
    assert_eq!(reply_errors(&done), None, "a real done is valid");
    let mut changes: Vec<(&str, Value)> = Vec::new();
    let mut missing = done.clone();
    missing.as_object_mut().unwrap().remove("bytes_out");
    changes.push(("a missing field", missing));
    changes.push((
        "an unknown field",
        json!({"type": "pong", "version": "0.1.0", "shards": 2, "backend": "uring", "extra": 1}),
    ));
    changes.push(("a negative count", {
        let mut r = done.clone();
        r["bytes_in"] = json!(-1);
        r
    }));
    changes.push(("a bad job id", {
        let mut r = done.clone();
        r["job"] = json!("x");
        r
    }));
    changes.push((
        "an unknown code",
        json!({"type": "error", "code": "oops", "message": "m"}),
    ));
    changes.push((
        "the io_uring backend name",
        json!({"type": "pong", "version": "0.1.0", "shards": 2, "backend": "io_uring"}),
    ));
    changes.push(("an unknown type", json!({"type": "hello"})));
    for (what, reply) in changes {
        assert!(
            reply_errors(&reply).is_some(),
            "the schema accepts a reply with {what}: {reply}"
        );
    }
}
