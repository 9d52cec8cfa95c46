//! `ringcrypt inspect FILE…`: what each sealed file says about itself (format, version,
//! chunk size, key id, records, sizes), with no key; with `--keys`, also its key's name and
//! state and the exact plaintext size. `--json`: one `inspect` line per file (or an `error`
//! line with its `path`).
//!
//! What this room does not do: read the file ([`crate::offline::inspect`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::args::Cli;
use super::offline::load_ring;
use super::{EXIT_FAILED, Failure, print};
use crate::crypto::keys::KeyRing;
use crate::error::Error;
use crate::offline::inspect::{Inspection, inspect};
use crate::protocol::Format;

pub(super) fn run(cli: &Cli, inputs: &[PathBuf]) -> Result<(), Failure> {
    let ring: Option<KeyRing> = match &cli.keys {
        Some(path) => Some(load_ring(Some(path))?),
        None => None,
    };
    let mut failed = 0u64;
    let mut stdout = std::io::stdout().lock();
    for path in inputs {
        let found = inspect(path, ring.as_ref());
        let problem = match &found {
            Ok(found) => found.problem.as_ref(),
            Err(err) => Some(err),
        };
        if let Some(err) = problem {
            failed += 1;
            if !cli.json {
                eprintln!("error: {} [{}]", err.message, err.code);
            }
        }
        let text = match (&found, cli.json) {
            (Ok(found), true) => json_of(path, found).to_string() + "\n",
            (Ok(found), false) => human(path, found, ring.is_some()),
            (Err(err), true) => error_json(path, err).to_string() + "\n",
            (Err(_), false) => String::new(),
        };
        let _ = stdout.write_all(text.as_bytes());
    }
    let _ = stdout.flush();
    match failed {
        0 => Ok(()),
        failed => Err(Failure {
            exit: EXIT_FAILED,
            error: format!(
                "{} of {} could not be read as a sealed file",
                print::count(failed, "file", "files"),
                inputs.len()
            ),
            hint: None,
            code: "failed",
            json_shown: true,
        }),
    }
}

fn error_json(path: &Path, err: &Error) -> Value {
    json!({"type": "error", "path": path, "code": err.code.as_str(), "message": err.message})
}

fn json_of(path: &Path, found: &Inspection) -> Value {
    let mut line = json!({
        "type": "inspect",
        "path": path,
        "format": found.format.as_str(),
        "file_bytes": found.file_bytes,
        "plaintext_bytes": found.exact_plaintext(),
    });
    if let Some((lo, hi)) = found.plaintext {
        line["plaintext_bytes_min"] = lo.into();
        line["plaintext_bytes_max"] = hi.into();
    }
    if let Some(header) = &found.header {
        line["version"] = crate::crypto::format::VERSION.into();
        line["suite"] = "aes-256-cbc-hmac-sha256".into();
        line["chunk_log2"] = header.chunk_log2.into();
        line["chunk_bytes"] = header.chunk_bytes().into();
        line["key_id"] = found.key_id_hex().into();
        line["records"] = found.records.into();
    } else {
        line["suite"] = "aes-256-cbc-pbkdf2 (not authenticated)".into();
    }
    if let Some((name, state)) = &found.key {
        line["key_name"] = name.as_str().into();
        line["key_state"] = (*state).into();
    }
    if let Some(err) = &found.problem {
        line["problem"] = json!({"code": err.code.as_str(), "message": err.message});
    }
    line
}

fn human(path: &Path, found: &Inspection, with_ring: bool) -> String {
    let mut rows: Vec<(&str, String)> = Vec::new();
    let title = match found.format {
        Format::Ringcrypt => format!(
            "ringcrypt v{}, AES-256-CBC + HMAC-SHA256 per chunk",
            crate::crypto::format::VERSION
        ),
        Format::Openssl => "openssl enc (AES-256-CBC, PBKDF2), NOT authenticated".to_string(),
    };
    if let Some(header) = &found.header {
        rows.push((
            "chunk size",
            format!("{} bytes (2^{})", header.chunk_bytes(), header.chunk_log2),
        ));
        rows.push(("key id", found.key_id_hex().unwrap_or_default()));
        if with_ring {
            rows.push((
                "key",
                match &found.key {
                    Some((name, state)) => format!("{name} ({state})"),
                    None => "not in the key ring".into(),
                },
            ));
        }
        if let Some(records) = found.records {
            rows.push(("records", records.to_string()));
        }
    }
    rows.push(("file size", format!("{} bytes", found.file_bytes)));
    rows.push((
        "plaintext",
        match (found.plaintext, found.exact_plaintext()) {
            (_, Some(exact)) => format!("{exact} bytes"),
            (Some((lo, hi)), None) if with_ring => {
                format!("{lo} to {hi} bytes (the key ring cannot open it for the exact size)")
            }
            (Some((lo, hi)), None) => {
                format!("{lo} to {hi} bytes (the exact size needs the key: pass --keys)")
            }
            (None, _) => "unknown".into(),
        },
    ));
    let mut out = format!("{}: {title}\n", path.display());
    for (name, value) in rows {
        out.push_str(&format!("  {name:<11} {value}\n"));
    }
    out
}
