//! `ringcrypt verify FILE… | -r TREE`: every chunk's tag checked in this process with the key
//! ring (`--keys`), no plaintext written; a line per file, a summary, exit 1 on any failure.
//! `--json`: one line per file (`verified`, `skipped`) and a `summary` line.
//!
//! Through the daemon it is refused for now, with the way to run it here: the daemon's own
//! `verify` op is yet to come.
//!
//! What this room does not do: the checking and the walk ([`crate::offline::verify`]).

use std::io::Write;
use std::path::PathBuf;

use serde_json::json;

use super::args::Cli;
use super::offline::load_ring;
use super::{EXIT_FAILED, Failure, print, usage};
use crate::offline::verify::{self, Event};

/// What a verify run counted.
#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    skipped: u64,
    bytes: u64,
}

pub(super) fn run(
    cli: &Cli,
    inputs: &[PathBuf],
    recursive: bool,
    quiet: bool,
) -> Result<(), Failure> {
    if cli.keys.is_none() {
        return Err(usage(
            "verify runs in this process for now and needs the key ring the files were sealed \
             with; the daemon does not verify yet",
            "pass --keys FILE (or set RINGCRYPT_KEYS)",
        ));
    }
    let ring = load_ring(cli.keys.as_deref())?;
    let mut tally = Tally::default();
    let json = cli.json;
    let mut stdout = std::io::stdout().lock();
    verify::verify_all(&ring, inputs, recursive, 0, |event| match event {
        Event::Checked { path, result } => {
            let line = match &result {
                Ok(plain) => {
                    tally.ok += 1;
                    tally.bytes += plain;
                    if json {
                        Some(json!({"type": "verified", "path": path, "ok": true, "plaintext_bytes": plain}).to_string())
                    } else {
                        (!quiet).then(|| format!("ok: {}", path.display()))
                    }
                }
                Err(err) => {
                    tally.failed += 1;
                    Some(if json {
                        json!({"type": "verified", "path": path, "ok": false, "code": err.code.as_str(), "message": err.message}).to_string()
                    } else {
                        format!("FAILED: {} [{}]", err.message, err.code)
                    })
                }
            };
            if let Some(line) = line {
                let _ = writeln!(stdout, "{line}");
            }
        }
        Event::Skipped { path, reason } => {
            tally.skipped += 1;
            if json {
                let _ = writeln!(
                    stdout,
                    "{}",
                    json!({"type": "skipped", "path": path, "reason": reason})
                );
            } else if !quiet {
                let _ = writeln!(stdout, "skipped: {} ({reason})", path.display());
            }
        }
    });
    let summary = if json {
        json!({
            "type": "summary",
            "files_ok": tally.ok,
            "files_failed": tally.failed,
            "files_skipped": tally.skipped,
            "plaintext_bytes": tally.bytes,
        })
        .to_string()
    } else {
        format!(
            "verified {}: {} ok, {} failed, {} skipped ({} bytes of plaintext checked)",
            print::count(tally.ok + tally.failed, "file", "files"),
            tally.ok,
            tally.failed,
            tally.skipped,
            tally.bytes
        )
    };
    let _ = writeln!(stdout, "{summary}").and_then(|()| stdout.flush());
    match tally.failed {
        0 => Ok(()),
        failed => Err(Failure {
            exit: EXIT_FAILED,
            error: format!(
                "{} failed verification",
                print::count(failed, "file", "files")
            ),
            hint: Some(
                "the files listed FAILED are damaged or were not sealed with this key ring; \
                 restore them from another copy"
                    .into(),
            ),
            code: "failed",
            json_shown: true,
        }),
    }
}
