//! `docs/protocol.schema.json`, the JSON Schema of the protocol, applied to every reply the
//! harness's [`super::Client`] reads: a reply the schema does not describe fails the test
//! that received it, so the schema and the daemon cannot drift apart.

use std::sync::OnceLock;

use serde_json::Value;

/// The schema file, relative to the package root.
pub const SCHEMA_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.schema.json");

/// The schema document as shipped.
pub fn schema_document() -> Value {
    let text =
        std::fs::read_to_string(SCHEMA_PATH).unwrap_or_else(|e| panic!("read {SCHEMA_PATH}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{SCHEMA_PATH} is not JSON: {e}"))
}

/// A validator for one of the schema's top definitions (`reply` or `request`): the whole
/// document, rooted at `#/$defs/{name}`.
pub fn validator_for(name: &str) -> jsonschema::Validator {
    let mut document = schema_document();
    let root = document.as_object_mut().expect("the schema is an object");
    root.remove("oneOf");
    root.insert("$ref".into(), Value::String(format!("#/$defs/{name}")));
    jsonschema::validator_for(&document)
        .unwrap_or_else(|e| panic!("{SCHEMA_PATH} does not compile as a JSON Schema: {e}"))
}

fn replies() -> &'static jsonschema::Validator {
    static REPLIES: OnceLock<jsonschema::Validator> = OnceLock::new();
    REPLIES.get_or_init(|| validator_for("reply"))
}

/// Why `value` is not a valid reply, or `None` when it is.
pub fn reply_errors(value: &Value) -> Option<String> {
    let errors: Vec<String> = replies()
        .iter_errors(value)
        .map(|e| format!("  at {}: {e}", e.instance_path()))
        .collect();
    (!errors.is_empty()).then(|| errors.join("\n"))
}

/// Fails the test when `line` (one reply, as received) breaks the schema, or does not start
/// with its `type` as the protocol promises.
#[track_caller]
pub fn check_reply(line: &str, reply: &Value) {
    assert!(
        line.trim_start().starts_with("{\"type\":"),
        "a reply must start with its \"type\" (docs/protocol.md): {line:?}"
    );
    if let Some(errors) = reply_errors(reply) {
        panic!("a reply breaks docs/protocol.schema.json:\n{line}{errors}");
    }
}
