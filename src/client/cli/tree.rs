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

use super::args::Cli;
use super::daemon::{current_dir, daemon_settings, wire_path};
use super::offline::{load_ring, no_json};
use super::{Failure, FileCmd, decrypt_output, files_failed, print, usage};
use crate::client::conn::Client;
use crate::error::Code;
use crate::limits::CHUNK_LOG2_DEFAULT;
use crate::offline::output::Durability;
use crate::offline::tree::{self, Summary, TreeJob};
use crate::protocol::Format;
use crate::protocol::{Done, FileJobSpec, FileOp, Progress, ReplyLine, Request};
use crate::tree_rules::{Partition, with_suffix};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the plain (not a terminal) progress line is printed, at most.
const PLAIN_PROGRESS_INTERVAL: Duration = Duration::from_secs(2);

/// A `-r` file job, from the command line: what to do to which trees.
#[derive(Debug)]
pub(super) struct TreePlan {
    pub(super) op: FileOp,
    /// The input as the user named it, trailing `/` and `.` components dropped.
    pub(super) input: PathBuf,
    pub(super) output: PathBuf,
    key: Option<String>,
    pub(super) format: Format,
    pub(super) chunk_log2: Option<u8>,
    overwrite: bool,
    skip_existing: bool,
    partition: Option<Partition>,
    quiet: bool,
}

impl TreePlan {
    /// The plan when the command is a file job with `-r`; `None` otherwise.
    pub(super) fn from_cmd(cmd: &FileCmd) -> Result<Option<TreePlan>, Failure> {
        if !cmd.tree.recursive {
            return Ok(None);
        }
        let input = tidy(cmd.input());
        let (output, overwrite) = match cmd.op {
            FileOp::Encrypt => match &cmd.output {
                Some(output) => (output.clone(), cmd.force),
                None => {
                    named(&input)?;
                    (with_suffix(&input), cmd.force)
                }
            },
            FileOp::Decrypt => (decrypt_output(&input, cmd.output.as_deref())?, cmd.force),
            FileOp::Rewrap => {
                if cmd.in_place && cmd.tree.skip_existing {
                    return Err(usage(
                        "--skip-existing with --in-place would skip every file (each output \
                         is its own input, and it verifies)",
                        "leave out --skip-existing, or write to another tree with -o OUTDIR",
                    ));
                }
                // In place, every file is replaced: that is the point.
                match &cmd.output {
                    Some(output) => (output.clone(), cmd.force),
                    None => (input.clone(), true),
                }
            }
            FileOp::Verify => return Err(super::verify_writes_nothing()),
        };
        Ok(Some(TreePlan {
            op: cmd.op,
            input,
            output,
            key: cmd.key.clone(),
            format: cmd.format,
            chunk_log2: cmd.chunk_log2,
            overwrite,
            skip_existing: cmd.tree.skip_existing,
            partition: cmd.tree.partition,
            quiet: cmd.tree.quiet,
        }))
    }

    /// The offline engine's job for this plan.
    pub(super) fn job(&self) -> TreeJob<'_> {
        TreeJob {
            op: self.op,
            input: &self.input,
            output: &self.output,
            key: self.key.as_deref(),
            format: self.format,
            chunk_log2: self.chunk_log2.unwrap_or(CHUNK_LOG2_DEFAULT),
            overwrite: self.overwrite,
            skip_existing: self.skip_existing,
            partition: self.partition,
            durability: Durability::Fsync,
            workers: 0,
        }
    }

    /// The daemon's recursive request for this plan.
    pub(super) fn request(&self) -> Result<Request, Failure> {
        daemon_settings(self.format, self.chunk_log2)?;
        let cwd = current_dir()?;
        let mut spec = FileJobSpec::new(
            self.op,
            wire_path(&cwd, &self.input)?,
            wire_path(&cwd, &self.output)?,
        );
        if spec.input == spec.output && !self.in_place() {
            return Err(usage(
                format!("{} is the input directory itself", self.output.display()),
                "choose another output directory",
            ));
        }
        spec.key = self.key.clone();
        spec.recursive = true;
        spec.overwrite = self.overwrite;
        spec.skip_existing = self.skip_existing;
        spec.partition = self.partition;
        Ok(Request::File(spec))
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
    let job = plan.job();
    let mut display = ProgressDisplay::new(plan.quiet);
    let summary = tree::run(&ring, &job, |snapshot| display.update(snapshot));
    display.finish();
    finish_tree(plan, &summary?, None)
}

/// Runs a tree job through the daemon: one recursive request, its `progress` lines shown.
pub(super) fn run_daemon(cli: &Cli, plan: &TreePlan) -> Result<(), Failure> {
    let request = plan.request()?;
    let mut client = Client::connect(&cli.socket)?;
    let json = cli.json;
    let mut display = ProgressDisplay::new(plan.quiet || json);
    let mut errored = false;
    let reply = client.request(&request, |line, reply| {
        errored = matches!(reply, ReplyLine::Error(_));
        if json {
            print::raw_line(line);
        } else if let ReplyLine::Progress(progress) = reply {
            display.update(&snapshot_from(progress));
        }
    });
    display.finish();
    let reply = reply.map_err(|err| Failure::from(err).shown(json && errored))?;
    let done = match reply {
        ReplyLine::Done(done) => done,
        other => return Err(print::unexpected_reply(&request, &other)),
    };
    let job = done.job.to_string();
    let summary = summary_from(done);
    if json {
        return match summary.files_failed {
            0 => Ok(()),
            failed => Err(files_failed(failed, Some(&job)).shown(true)),
        };
    }
    finish_tree(plan, &summary, Some(&job))
}

/// A `progress` reply as a snapshot for the display.
pub(super) fn snapshot_from(p: &Progress) -> tree::Snapshot {
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
pub(super) fn summary_from(done: Done) -> Summary {
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
    let part = plan
        .partition
        .map(|p| format!(" (partition {p})"))
        .unwrap_or_default();
    let headline = format!(
        "{} tree {} -> {}{part}",
        print::verb(plan.op),
        plan.input.display(),
        plan.output.display()
    );
    report_summary(&headline, summary, job)
}

/// Prints `HEADLINE: N ok, N failed, N skipped (...)` on stdout, then the failures and
/// skipped entries on stderr; fails with exit 1 when any file failed.
pub(super) fn report_summary(
    headline: &str,
    summary: &Summary,
    job: Option<&str>,
) -> Result<(), Failure> {
    let job_text = job.map(|job| format!(", job {job}")).unwrap_or_default();
    {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(
            stdout,
            "{headline}: {} ok, {} failed, {} skipped ({} bytes -> {} bytes{job_text})",
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
pub(super) enum ProgressDisplay {
    Quiet,
    Bar { bar: ProgressBar, counting: bool },
    Plain { last: Instant },
}

impl ProgressDisplay {
    pub(super) fn new(quiet: bool) -> ProgressDisplay {
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

    pub(super) fn update(&mut self, s: &tree::Snapshot) {
        match self {
            ProgressDisplay::Quiet => {}
            ProgressDisplay::Bar { bar, counting } => {
                if *counting && s.totals_final {
                    bar.set_style(Self::final_style());
                    *counting = false;
                } else if *counting && is_one_stream(s) {
                    // Nothing is being counted: a stream has no total, only a spinner.
                    bar.set_style(
                        ProgressStyle::with_template("{spinner} {msg}")
                            .expect("a fixed, valid template"),
                    );
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

    pub(super) fn finish(&self) {
        if let ProgressDisplay::Bar { bar, .. } = self {
            bar.finish_and_clear();
        }
    }
}

/// One file's job on a stream: bytes without a total.
fn is_one_stream(s: &tree::Snapshot) -> bool {
    s.files_total == 1 && s.bytes_total == 0 && !s.totals_final
}

/// `120/5000 files, 12.3/50.0 MB, 40.1 MB/s` (MB = 10^6 bytes).
fn progress_line(s: &tree::Snapshot) -> String {
    let mb = |bytes: u64| bytes as f64 / 1e6;
    if is_one_stream(s) {
        // One stream: bytes without a total (`12.3 MB, 40.1 MB/s`).
        return format!(
            "{:.1} MB, {:.1} MB/s",
            mb(s.bytes_done),
            mb(s.rate_bytes_per_sec)
        );
    }
    format!(
        "{}/{} files, {:.1}/{:.1} MB, {:.1} MB/s",
        s.files_done,
        s.files_total,
        mb(s.bytes_done),
        mb(s.bytes_total),
        mb(s.rate_bytes_per_sec)
    )
}
