//! `-r`: a directory tree, offline or through the daemon. The plan a command line makes
//! (default output directories, the options that do not go together), the run (offline in
//! [`crate::offline::tree`], with a worker per core; through the daemon, one recursive request), the
//! progress display both drive, and the summary both end with.
//!
//! What this room does not do: walk a tree or run its files (that is [`crate::offline::tree`] offline,
//! the daemon's `tree_job` otherwise), or name outputs inside the tree ([`crate::tree_rules`]).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::args::{Cli, Command};
use super::daemon::{current_dir, daemon_settings, wire_path};
use super::offline::{load_ring, no_json};
use super::{Failure, decrypt_output, files_failed, print, usage};
use crate::client::conn::Client;
use crate::error::Code;
use crate::limits::CHUNK_LOG2_DEFAULT;
use crate::offline::output::Durability;
use crate::offline::tree::{self, Summary, TreeJob};
use crate::protocol::Format;
use crate::protocol::{Done, FileJobSpec, FileOp, Progress, ReplyLine, Request};
use crate::tree_rules::with_suffix;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the plain (not a terminal) progress line is printed, at most.
const PLAIN_PROGRESS_INTERVAL: Duration = Duration::from_secs(2);

/// A `-r` file job, from the command line: what to do to which trees.
#[derive(Debug)]
pub(super) struct TreePlan {
    op: FileOp,
    /// The input as the user named it, trailing `/` and `.` components dropped.
    input: PathBuf,
    output: PathBuf,
    key: Option<String>,
    format: Format,
    chunk_log2: Option<u8>,
    overwrite: bool,
    skip_existing: bool,
    quiet: bool,
}

impl TreePlan {
    /// The plan when the command is a file job with `-r`; `None` otherwise.
    pub(super) fn from_command(command: &Command) -> Result<Option<TreePlan>, Failure> {
        let tree = match command {
            Command::Encrypt { tree, .. }
            | Command::Decrypt { tree, .. }
            | Command::Rewrap { tree, .. } => *tree,
            _ => return Ok(None),
        };
        if !tree.recursive {
            return Ok(None);
        }
        let plan = |op, input, output, key: &Option<String>, format, chunk_log2, overwrite| {
            Some(TreePlan {
                op,
                input,
                output,
                key: key.clone(),
                format,
                chunk_log2,
                overwrite,
                skip_existing: tree.skip_existing,
                quiet: tree.quiet,
            })
        };
        Ok(match command {
            Command::Encrypt {
                input,
                output,
                key,
                format,
                chunk_log2,
                force,
                ..
            } => {
                let format = format.format();
                let input = tidy(input);
                let output = match output {
                    Some(output) => output.clone(),
                    None => {
                        named(&input)?;
                        with_suffix(&input)
                    }
                };
                plan(
                    FileOp::Encrypt,
                    input,
                    output,
                    key,
                    format,
                    *chunk_log2,
                    *force,
                )
            }
            Command::Decrypt {
                input,
                output,
                key,
                force,
                ..
            } => {
                let input = tidy(input);
                let output = decrypt_output(&input, output.as_deref())?;
                plan(
                    FileOp::Decrypt,
                    input,
                    output,
                    key,
                    Format::Ringcrypt,
                    None,
                    *force,
                )
            }
            Command::Rewrap {
                input,
                output,
                in_place,
                key,
                chunk_log2,
                force,
                ..
            } => {
                let input = tidy(input);
                if *in_place && tree.skip_existing {
                    return Err(usage(
                        "--skip-existing with --in-place would skip every file (each output \
                         is its own input, and it verifies)",
                        "leave out --skip-existing, or write to another tree with -o OUTDIR",
                    ));
                }
                // In place, every file is replaced: that is the point.
                let (output, overwrite) = match output {
                    Some(output) => (output.clone(), *force),
                    None => (input.clone(), true),
                };
                let format = Format::Ringcrypt;
                plan(
                    FileOp::Rewrap,
                    input,
                    output,
                    key,
                    format,
                    *chunk_log2,
                    overwrite,
                )
            }
            _ => None,
        })
    }

    fn in_place(&self) -> bool {
        self.input == self.output
    }
}

/// `path` without trailing `/` or `.` components, so `photos/` gets the sibling
/// `photos.rcrypt` rather than `photos/.rcrypt`.
fn tidy(path: &Path) -> PathBuf {
    let tidy: PathBuf = path
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect();
    if tidy.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        tidy
    }
}

/// Refuses to derive an output name from a path without a final name (`.`, `..`, `/`).
fn named(input: &Path) -> Result<(), Failure> {
    if input.file_name().is_none() {
        return Err(usage(
            format!("cannot derive an output name from {}", input.display()),
            "pass -o OUTDIR",
        ));
    }
    Ok(())
}

/// Runs a tree job in this process.
pub(super) fn run_offline(cli: &Cli, plan: &TreePlan) -> Result<(), Failure> {
    no_json(cli)?;
    let ring = load_ring(cli.keys.as_deref())?;
    if plan.format == Format::Openssl {
        eprintln!(
            "warning: the openssl format is NOT authenticated: anyone who can modify the files \
             under {} can change what they decrypt to, undetected. Prefer the default \
             ringcrypt format.",
            plan.output.display()
        );
    }
    let job = TreeJob {
        op: plan.op,
        input: &plan.input,
        output: &plan.output,
        key: plan.key.as_deref(),
        format: plan.format,
        chunk_log2: plan.chunk_log2.unwrap_or(CHUNK_LOG2_DEFAULT),
        overwrite: plan.overwrite,
        skip_existing: plan.skip_existing,
        durability: Durability::Fsync,
        workers: 0,
    };
    let mut display = ProgressDisplay::new(plan.quiet);
    let summary = tree::run(&ring, &job, |snapshot| display.update(snapshot));
    display.finish();
    finish_tree(plan, &summary?, None)
}

/// Runs a tree job through the daemon: one recursive request, its `progress` lines shown.
pub(super) fn run_daemon(cli: &Cli, plan: &TreePlan) -> Result<(), Failure> {
    daemon_settings(plan.format, plan.chunk_log2)?;
    let cwd = current_dir()?;
    let mut spec = FileJobSpec::new(
        plan.op,
        wire_path(&cwd, &plan.input)?,
        wire_path(&cwd, &plan.output)?,
    );
    if spec.input == spec.output && !plan.in_place() {
        return Err(usage(
            format!("{} is the input directory itself", plan.output.display()),
            "choose another output directory",
        ));
    }
    spec.key = plan.key.clone();
    spec.recursive = true;
    spec.overwrite = plan.overwrite;
    spec.skip_existing = plan.skip_existing;
    let request = Request::File(spec);
    let mut client = Client::connect(&cli.socket)?;
    let json = cli.json;
    let mut display = ProgressDisplay::new(plan.quiet || json);
    let reply = client.request(&request, |line, reply| {
        if json {
            print::raw_line(line);
        } else if let ReplyLine::Progress(progress) = reply {
            display.update(&snapshot_from(progress));
        }
    });
    display.finish();
    let done = match reply? {
        ReplyLine::Done(done) => done,
        other => return Err(print::unexpected_reply(&request, &other)),
    };
    let job = done.job.to_string();
    let summary = summary_from(done);
    if json {
        return match summary.files_failed {
            0 => Ok(()),
            failed => Err(files_failed(failed, Some(&job))),
        };
    }
    finish_tree(plan, &summary, Some(&job))
}

/// A `progress` reply as a snapshot for the display.
fn snapshot_from(p: &Progress) -> tree::Snapshot {
    tree::Snapshot {
        files_done: p.files_done,
        files_total: p.files_total,
        bytes_done: p.bytes_done,
        bytes_total: p.bytes_total,
        rate_bytes_per_sec: p.rate_bytes_per_sec,
        totals_final: p.totals_final,
    }
}

/// A tree job's `done` reply as a summary. Unknown error codes become `internal` (the list
/// may grow), keeping the daemon's code in the message.
fn summary_from(done: Done) -> Summary {
    let failures = done
        .failures
        .into_iter()
        .map(|f| {
            let (code, message) = match Code::parse(&f.code) {
                Some(code) => (code, f.message),
                None => (
                    Code::Internal,
                    format!("{} (error code {})", f.message, f.code),
                ),
            };
            tree::Failure {
                path: f.path,
                code,
                message,
            }
        })
        .collect();
    Summary {
        bytes_in: done.bytes_in,
        bytes_out: done.bytes_out,
        files_ok: done.files_ok,
        files_failed: done.files_failed,
        files_skipped: done.files_skipped,
        failures,
        failures_omitted: done.failures_omitted,
        skipped: done.skipped,
        skipped_omitted: done.skipped_omitted,
    }
}

/// Prints a tree job's summary (stdout), then its failures and skipped entries (stderr);
/// fails with exit 1 when any file failed.
fn finish_tree(plan: &TreePlan, summary: &Summary, job: Option<&str>) -> Result<(), Failure> {
    let job_text = job.map(|job| format!(", job {job}")).unwrap_or_default();
    {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(
            stdout,
            "{} tree {} -> {}: {} ok, {} failed, {} skipped ({} bytes -> {} bytes{job_text})",
            print::verb(plan.op),
            plan.input.display(),
            plan.output.display(),
            summary.files_ok,
            summary.files_failed,
            summary.files_skipped,
            summary.bytes_in,
            summary.bytes_out,
        )
        .and_then(|()| stdout.flush());
    }
    let mut stderr = std::io::stderr().lock();
    for failure in &summary.failures {
        let _ = writeln!(
            stderr,
            "failed: {}: {} [{}]",
            failure.path.display(),
            failure.message,
            failure.code
        );
    }
    if summary.failures_omitted > 0 {
        let _ = writeln!(
            stderr,
            "failed: ... and {} more not listed",
            summary.failures_omitted
        );
    }
    // Outputs left because they exist and verify are the point of --skip-existing, not news.
    for skipped in summary
        .skipped
        .iter()
        .filter(|s| s.reason != tree::REASON_EXISTS)
    {
        let _ = writeln!(
            stderr,
            "skipped: {} ({})",
            skipped.path.display(),
            skipped.reason
        );
    }
    if summary.skipped_omitted > 0 {
        let _ = writeln!(
            stderr,
            "skipped: ... and {} more not listed",
            summary.skipped_omitted
        );
    }
    match summary.files_failed {
        0 => Ok(()),
        failed => Err(files_failed(failed, job)),
    }
}

/// How a tree job's progress is shown on stderr: a bar on a terminal, a plain line at most
/// every [`PLAIN_PROGRESS_INTERVAL`] otherwise (logs, CI), nothing with `--quiet`.
enum ProgressDisplay {
    Quiet,
    Bar { bar: ProgressBar, counting: bool },
    Plain { last: Instant },
}

impl ProgressDisplay {
    fn new(quiet: bool) -> ProgressDisplay {
        if quiet {
            ProgressDisplay::Quiet
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(Self::counting_style());
            ProgressDisplay::Bar {
                bar,
                counting: true,
            }
        } else {
            ProgressDisplay::Plain {
                last: Instant::now(),
            }
        }
    }

    fn counting_style() -> ProgressStyle {
        ProgressStyle::with_template("{spinner} {msg} (counting…)")
            .expect("a fixed, valid template")
    }

    fn final_style() -> ProgressStyle {
        ProgressStyle::with_template("[{bar:30}] {msg}, eta {eta}")
            .expect("a fixed, valid template")
            .progress_chars("=> ")
    }

    fn update(&mut self, s: &tree::Snapshot) {
        match self {
            ProgressDisplay::Quiet => {}
            ProgressDisplay::Bar { bar, counting } => {
                if *counting && s.totals_final {
                    bar.set_style(Self::final_style());
                    *counting = false;
                }
                bar.set_length(s.bytes_total);
                bar.set_position(s.bytes_done.min(s.bytes_total));
                bar.set_message(progress_line(s));
                if *counting {
                    bar.tick();
                }
            }
            ProgressDisplay::Plain { last } => {
                if last.elapsed() >= PLAIN_PROGRESS_INTERVAL {
                    *last = Instant::now();
                    let counting = if s.totals_final {
                        ""
                    } else {
                        " (still counting)"
                    };
                    eprintln!("progress: {}{counting}", progress_line(s));
                }
            }
        }
    }

    fn finish(&self) {
        if let ProgressDisplay::Bar { bar, .. } = self {
            bar.finish_and_clear();
        }
    }
}

/// `120/5000 files, 12.3/50.0 MB, 40.1 MB/s` (MB = 10^6 bytes).
fn progress_line(s: &tree::Snapshot) -> String {
    let mb = |bytes: u64| bytes as f64 / 1e6;
    format!(
        "{}/{} files, {:.1}/{:.1} MB, {:.1} MB/s",
        s.files_done,
        s.files_total,
        mb(s.bytes_done),
        mb(s.bytes_total),
        mb(s.rate_bytes_per_sec)
    )
}
