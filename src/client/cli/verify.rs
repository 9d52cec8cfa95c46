//! `ringcrypt verify FILE… | -r TREE`: every chunk's tag checked, no plaintext written; a line
//! per file, a summary, exit 1 on any failure. `--json`: one line per file (`verified`,
//! `skipped`) and a `summary` line.
//!
//! Through the daemon (the default) each input is one `verify` request, several in flight
//! on one connection, so the shards check files at once; a tree is one request whose `done`
//! lists the files that failed and the entries skipped (the files that verified are counted,
//! not named). With `--keys` the files are checked in this process with that key ring.
//!
//! What this room does not do: the checking and the walk ([`crate::offline::verify`], or the
//! daemon).

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use serde_json::json;

use super::args::Cli;
use super::daemon::{current_dir, wire_path};
use super::offline::load_ring;
use super::tree::{ProgressDisplay, snapshot_from};
use super::{EXIT_FAILED, Failure, print};
use crate::client::conn::Client;
use crate::error::{Code, Error};
use crate::offline::verify::{self, Event};
use crate::protocol::{Done, FileJobSpec, FileOp, ReplyLine, Request};

/// Requests in flight at once through the daemon, as for several inputs of a file job.
const IN_FLIGHT: usize = 16;

/// What a run reports: a file's or a skipped entry's [`Event`], or a tree the daemon
/// verified, whose files that verified are counted, not named.
enum Report {
    One(Event),
    Tree {
        path: PathBuf,
        files_ok: u64,
        plaintext_bytes: u64,
        /// Failures and skipped entries past the daemon's lists, counted only.
        failed_omitted: u64,
        skipped_omitted: u64,
    },
}

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
    let mut tally = Tally::default();
    let json = cli.json;
    let mut stdout = std::io::stdout().lock();
    let mut on_event = |report: Report| match report {
        Report::One(Event::Checked { path, result }) => {
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
        Report::One(Event::Skipped { path, reason }) => {
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
        Report::Tree {
            path,
            files_ok,
            plaintext_bytes,
            failed_omitted,
            skipped_omitted,
        } => {
            tally.ok += files_ok;
            tally.bytes += plaintext_bytes;
            tally.failed += failed_omitted;
            tally.skipped += skipped_omitted;
            if json {
                let line = json!({"type": "tree", "path": path, "files_ok": files_ok,
                    "plaintext_bytes": plaintext_bytes, "failures_omitted": failed_omitted,
                    "skipped_omitted": skipped_omitted});
                let _ = writeln!(stdout, "{line}");
                return;
            }
            if !quiet {
                let ok = print::count(files_ok, "file", "files");
                let _ = writeln!(stdout, "ok: {ok} under {}", path.display());
            }
            if failed_omitted > 0 {
                let _ = writeln!(
                    stdout,
                    "FAILED: {} more under {} (the daemon lists the first 100)",
                    print::count(failed_omitted, "file", "files"),
                    path.display()
                );
            }
        }
    };
    if cli.keys.is_some() {
        let ring = load_ring(cli.keys.as_deref())?;
        verify::verify_all(&ring, inputs, recursive, 0, |event| {
            on_event(Report::One(event))
        });
    } else {
        through_daemon(cli, inputs, recursive, quiet || json, &mut on_event)?;
    }
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
                "the files listed FAILED are damaged or were not sealed with the key ring that \
                 checked them; restore them from another copy"
                    .into(),
            ),
            code: "failed",
            json_shown: true,
        }),
    }
}

/// One input sent to the daemon: its name as the user gave it, and whether it is a tree.
struct Sent {
    input: PathBuf,
    tree: bool,
}

/// Verifies `inputs` through the daemon: a `verify` request each (with `recursive` for a
/// directory under `-r`), up to [`IN_FLIGHT`] at once, their results as [`Event`]s.
fn through_daemon(
    cli: &Cli,
    inputs: &[PathBuf],
    recursive: bool,
    quiet: bool,
    on_event: &mut impl FnMut(Report),
) -> Result<(), Failure> {
    let cwd = current_dir()?;
    let mut requests = Vec::with_capacity(inputs.len());
    for input in inputs {
        let tree = recursive && std::fs::metadata(input).is_ok_and(|m| m.is_dir());
        let path = wire_path(&cwd, input)?;
        let mut spec = FileJobSpec::new(FileOp::Verify, path.clone(), path);
        spec.recursive = tree;
        requests.push((Request::File(spec), input.clone(), tree));
    }
    let trees = requests.iter().filter(|(_, _, tree)| *tree).count();
    // One tree's progress on a bar; with several at once, their counts would mix.
    let mut display = ProgressDisplay::new(quiet || trees != 1);
    let mut client = Client::connect(&cli.socket)?;
    let mut flying: HashMap<u64, Sent> = HashMap::new();
    let mut next = requests.into_iter();
    loop {
        while flying.len() < IN_FLIGHT
            && let Some((request, input, tree)) = next.next()
        {
            let id = client.send(&request, &[])?;
            let id = id.value().as_u64().unwrap_or_default();
            flying.insert(id, Sent { input, tree });
        }
        if flying.is_empty() {
            break;
        }
        let (_, id, line) = client.next_reply()?;
        let Some(id) = id.as_ref().and_then(serde_json::Value::as_u64) else {
            if let ReplyLine::Error(err) = line {
                // A line the daemon could not read an id from: it cannot be matched to an
                // input, so the run cannot go on reliably.
                display.finish();
                return Err(err.into());
            }
            continue;
        };
        match line {
            ReplyLine::Progress(p) if flying.get(&id).is_some_and(|s| s.tree) => {
                display.update(&snapshot_from(&p));
            }
            ReplyLine::Done(done) => {
                if let Some(sent) = flying.remove(&id) {
                    report_done(sent, done, on_event);
                }
            }
            ReplyLine::Error(err) => {
                if let Some(sent) = flying.remove(&id) {
                    on_event(Report::One(Event::Checked {
                        path: sent.input,
                        result: Err(err),
                    }));
                }
            }
            _ => {}
        }
    }
    display.finish();
    Ok(())
}

/// A `done` as reports: a file that verified, or a tree's failures, skipped entries and the
/// count of its files that verified.
fn report_done(sent: Sent, done: Done, on_event: &mut impl FnMut(Report)) {
    if !sent.tree {
        on_event(Report::One(Event::Checked {
            path: sent.input,
            result: Ok(done.bytes_out),
        }));
        return;
    }
    for failed in done.failures {
        // An unknown code (the list may grow) is still a failure.
        let code = Code::parse(&failed.code).unwrap_or(Code::Internal);
        on_event(Report::One(Event::Checked {
            path: failed.path,
            result: Err(Error::new(code, failed.message)),
        }));
    }
    for skipped in done.skipped {
        on_event(Report::One(Event::Skipped {
            path: skipped.path,
            reason: skipped_reason(&skipped.reason),
        }));
    }
    on_event(Report::Tree {
        path: sent.input,
        files_ok: done.files_ok,
        plaintext_bytes: done.bytes_out,
        failed_omitted: done.failures_omitted,
        skipped_omitted: done.skipped_omitted,
    });
}

/// A skip reason from the daemon as one of the fixed reasons (the list may grow).
fn skipped_reason(reason: &str) -> &'static str {
    use crate::tree_rules::{REASON_EXISTS, REASON_NOT_RCRYPT, Special};
    [
        Special::Symlink,
        Special::Fifo,
        Special::Socket,
        Special::Device,
        Special::Unknown,
    ]
    .map(Special::reason)
    .into_iter()
    .chain([REASON_NOT_RCRYPT, REASON_EXISTS])
    .find(|known| *known == reason)
    .unwrap_or("skipped by the daemon")
}
