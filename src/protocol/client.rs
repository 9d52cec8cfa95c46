//! The client's side of the wire: [`encode_request`] writes a request line, and
//! [`parse_reply`] reads a reply line, once, into its type, its id and its fields.
//! Reply types and fields this side does not know are kept, not refused, as the wire format
//! asks ("this list may grow").
//!
//! It does **not** own the connection or decide which reply line ends a request (that is
//! `crate::client`), nor print anything (`crate::cli`); the daemon's sides of these lines
//! are `request` and `reply`.

use serde_json::{Map, Value};

use super::reply::{Obj, line_of, write_json};
use super::{JobId, Request, RequestId, describe, quote};
use crate::error::{Code, Error};
use crate::offline::Format;

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
                obj.path("input", &spec.input).path("output", &spec.output);
                if let Some(key) = &spec.key {
                    obj.str("key", key);
                }
                // Written when not the default, even on decrypt or rewrap, where the daemon
                // refuses it: a caller's mistake is reported rather than dropped.
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
            }
            Request::Status { job } | Request::Cancel { job } => {
                obj.job("job", *job);
            }
            Request::Ping | Request::Jobs | Request::Stats | Request::Keys | Request::Reload => {}
        }
        obj.line();
    })
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
        if self.kind != "error" {
            return None;
        }
        let code_text = self
            .fields
            .get("code")
            .and_then(Value::as_str)
            .unwrap_or("");
        let message = self
            .fields
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("the daemon gave no message");
        Some(match Code::parse(code_text) {
            Some(code) => Error::new(code, message),
            None => Error::new(
                Code::Internal,
                format!("{message} (error code {})", quote(code_text)),
            ),
        })
    }
}

/// Parses one reply line (its newline may be left on). A line that is not a JSON object with
/// a string `"type"` is `internal`: the daemon never sends one, so something else is
/// listening on the socket or the daemon is broken.
pub fn parse_reply(line: &str) -> Result<Reply, Error> {
    let not_a_reply = |why: String| {
        Error::new(
            Code::Internal,
            format!("the reply from the socket {why}; is ringcryptd listening there?"),
        )
    };
    let value: Value = serde_json::from_str(line)
        .map_err(|err| not_a_reply(format!("is not valid JSON ({err})")))?;
    let Value::Object(mut fields) = value else {
        return Err(not_a_reply(format!(
            "is {}, not a JSON object",
            describe(&value)
        )));
    };
    let kind = match fields.remove("type") {
        Some(Value::String(kind)) => kind,
        _ => return Err(not_a_reply("has no \"type\" string".to_string())),
    };
    let id = fields.remove("id");
    Ok(Reply { kind, id, fields })
}
