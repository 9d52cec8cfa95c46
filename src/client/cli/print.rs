//! What the user reads of a reply or an outcome: the lines and tables for the daemon's final
//! replies (`pong`, `status`, `jobs`, `stats`, `keys`, ...), the summary line of a single-file
//! job (through the daemon or offline), the raw lines of `--json`, and the `error:` / `hint:`
//! lines of a failure.
//!
//! What this room does not do: decide anything (which reply a request calls for is checked
//! here only to refuse one it cannot show), talk to the daemon, or print a tree's progress
//! and summary (`tree` does, with the display it owns).

use std::io::Write;
use std::path::{Path, PathBuf};

use super::Failure;
use super::daemon::KeptJobs;
use crate::error::{Code, Error};
use crate::offline::{Job, Outcome};
use crate::protocol::{FileOp, JobEntry, KeyList, ReplyLine, Request};

/// A file job's paths as the user named them, for the summary line.
pub(super) struct Shown {
    pub(super) verb: &'static str,
    pub(super) input: PathBuf,
    pub(super) output: PathBuf,
}

/// The past tense of a file job, as summaries start.
pub(super) fn verb(op: FileOp) -> &'static str {
    match op {
        FileOp::Encrypt => "encrypted",
        FileOp::Decrypt => "decrypted",
        FileOp::Rewrap => "rewrapped",
        FileOp::Verify => "verified",
    }
}

/// Prints a failure on stderr: `error: ...`, then `hint: ...` where it has one.
pub(super) fn failure(failure: &Failure) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "error: {}", failure.error);
    if let Some(hint) = &failure.hint {
        let _ = writeln!(stderr, "hint: {hint}");
    }
}

/// Copies one of the daemon's reply lines to stdout as received (`--json`).
pub(super) fn raw_line(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(line.as_bytes())
        .and_then(|()| stdout.flush());
}

/// Prints the human form of a final reply. A reply this client cannot show for the request
/// (a type a newer daemon added) is an error rather than a blank.
pub(super) fn reply(
    request: &Request,
    shown: Option<&Shown>,
    socket: &Path,
    reply: &ReplyLine,
) -> Result<(), Failure> {
    let out = match reply {
        ReplyLine::Done(done) => match shown {
            Some(shown) => format!(
                "{} {} -> {} ({} bytes -> {} bytes, job {})\n",
                shown.verb,
                shown.input.display(),
                shown.output.display(),
                done.bytes_in,
                done.bytes_out,
                done.job,
            ),
            None => String::new(),
        },
        ReplyLine::Pong(pong) => format!(
            "ringcryptd {} at {}: {} shards, {} backend\n",
            pong.version,
            socket.display(),
            pong.shards,
            pong.backend,
        ),
        ReplyLine::Status(job) => format!(
            "job {}: {}, {}\n  {} {} -> {}\n{}",
            job.job,
            job.state,
            progress_text(job.progress.bytes_done, job.progress.bytes_total),
            job.op,
            job.input.display(),
            job.output.display(),
            match (&job.code, &job.message) {
                (Some(code), Some(message)) => format!("  {message} [{code}]\n"),
                _ => String::new(),
            }
        ),
        ReplyLine::Cancelled { job } => format!("cancelled job {job}\n"),
        ReplyLine::Jobs(jobs) => jobs_table(jobs),
        ReplyLine::Stats(shards) => {
            let mut rows = vec![[
                "SHARD".to_string(),
                "QUEUED".into(),
                "RUNNING".into(),
                "JOBS_DONE".into(),
                "BYTES_IN".into(),
                "BYTES_OUT".into(),
            ]];
            for s in shards {
                rows.push([
                    s.shard.to_string(),
                    s.queued.to_string(),
                    s.running.to_string(),
                    s.jobs_done.to_string(),
                    s.bytes_in.to_string(),
                    s.bytes_out.to_string(),
                ]);
            }
            table(&rows)
        }
        ReplyLine::Keys(keys) => keys_table(keys),
        ReplyLine::Reloaded { keys } => format!("reloaded: {}\n", count(*keys, "key", "keys")),
        ReplyLine::Accepted { .. }
        | ReplyLine::Progress(_)
        | ReplyLine::Error(_)
        | ReplyLine::Other { .. } => return Err(unexpected_reply(request, reply)),
    };
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush());
    Ok(())
}

/// `1 key`, `2 keys`: a count with the noun that agrees with it.
pub(super) fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The `jobs` table, or `no jobs`.
fn jobs_table(jobs: &[JobEntry]) -> String {
    let mut rows = vec![[
        "JOB".to_string(),
        "STATE".into(),
        "OP".into(),
        "PROGRESS".into(),
        "INPUT -> OUTPUT".into(),
    ]];
    for job in jobs {
        rows.push([
            job.job.to_string(),
            job.state.clone(),
            job.op.clone(),
            progress_text(job.progress.bytes_done, job.progress.bytes_total),
            format!("{} -> {}", job.input.display(), job.output.display()),
        ]);
    }
    if rows.len() == 1 {
        "no jobs\n".into()
    } else {
        table(&rows)
    }
}

/// Prints what `jobs` kept, then how many more there were (on stderr, so the table stays
/// clean for `grep` and `awk`).
pub(super) fn jobs(kept: KeptJobs) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(jobs_table(&kept.jobs).as_bytes())
        .and_then(|()| stdout.flush());
    if kept.left_out > 0 {
        let jobs = if kept.left_out == 1 { "job" } else { "jobs" };
        eprintln!(
            "... and {} more {jobs} not shown (the first {} are; --limit N shows more, \
             --limit 0 all)",
            kept.left_out, kept.limit
        );
    }
}

/// With `--json`, a failure the client itself decided (no daemon line said it) as one line
/// on stdout: `{"type":"error","code":...,"message":...,"hint":...,"exit":N}`. `code` is a
/// wire code, or `usage`, `unreachable` or `failed` (files of a job failed).
pub(super) fn json_failure(failure: &Failure) {
    let mut line = serde_json::json!({
        "type": "error",
        "code": failure.code,
        "message": failure.error,
        "exit": failure.exit,
    });
    if let Some(hint) = &failure.hint {
        line["hint"] = serde_json::Value::from(hint.as_str());
    }
    json_line(&line);
}

/// One JSON value as a line on stdout.
pub(super) fn json_line(value: &serde_json::Value) {
    let mut text = value.to_string();
    text.push('\n');
    raw_line(&text);
}

/// A command line clap refused (exit 2), or `--help` / `--version` (exit 0). With `--json`
/// anywhere on the line, a refusal is also one JSON error line on stdout.
pub(super) fn clap_error(err: clap::Error) -> std::process::ExitCode {
    use clap::error::ErrorKind;
    let informational = matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if !informational && std::env::args_os().any(|arg| arg == "--json") {
        let message = err.kind().as_str().unwrap_or("invalid command line");
        let rendered = err.render().to_string();
        let detail = rendered
            .lines()
            .next()
            .unwrap_or(message)
            .trim_start_matches("error: ");
        json_failure(&super::usage(detail, "see ringcrypt --help"));
    }
    let _ = err.print();
    std::process::ExitCode::from(err.exit_code() as u8)
}

/// The `keys` table: the default key marked, `-` for a passphrase's id.
fn keys_table(list: &KeyList) -> String {
    let mut rows = vec![[
        "NAME".to_string(),
        "ID".into(),
        "KIND".into(),
        "STATE".into(),
    ]];
    for key in &list.keys {
        let mut name = key.name.clone();
        if list.default.as_deref() == Some(name.as_str()) {
            name.push_str(" (default)");
        }
        rows.push([
            name,
            key.id.clone().unwrap_or_else(|| "-".into()),
            key.kind.clone(),
            key.state.clone(),
        ]);
    }
    table(&rows)
}

/// A final reply of a type the request does not call for: `internal`.
pub(super) fn unexpected_reply(request: &Request, reply: &ReplyLine) -> Failure {
    Failure::from(Error::new(
        Code::Internal,
        format!(
            "the daemon answered the {} request with a {:?} reply, which this client cannot \
             show (is ringcryptd newer than ringcrypt?)",
            request.op(),
            reply.kind()
        ),
    ))
}

fn progress_text(done: u64, total: u64) -> String {
    if total == 0 && done > 0 {
        // A stream: bytes without a total.
        format!("{done} bytes")
    } else if total == 0 {
        format!("{done}/{total} bytes")
    } else {
        // u128: done * 100 cannot overflow.
        let percent = u128::from(done.min(total)) * 100 / u128::from(total);
        format!("{done}/{total} bytes ({percent}%)")
    }
}

/// Left-aligned columns, two spaces apart; the last column is not padded.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                out.push_str(cell);
            } else {
                out.push_str(cell);
                let pad = widths[i] - cell.chars().count() + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    }
    out
}

/// The line of a single-file job done in this process.
pub(super) fn report(verb: &str, job: &Job, outcome: &Outcome) {
    println!(
        "{verb} {} -> {} ({} bytes -> {} bytes, {} format, key {:?})",
        job.input.display(),
        job.output.display(),
        outcome.bytes_in,
        outcome.bytes_out,
        outcome.format.as_str(),
        outcome.key
    );
}
