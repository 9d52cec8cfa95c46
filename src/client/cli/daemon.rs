//! A command through the daemon: the request a command line makes (paths made absolute
//! against our working directory, options only the offline mode has refused), the round trip
//! on the socket ([`crate::client`]), and a single file's input and output opened here and
//! passed as descriptors, then linked into place.
//!
//! What this room does not do: a `-r` tree (`tree` sends its own recursive request, with the
//! helpers here), print the outcome (`print`), or work without the daemon (`offline`).

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use super::args::{Cli, Command};
use super::print::{self, Shown};
use super::tree::{ProgressDisplay, snapshot_from};
use super::{Failure, FileCmd, decrypt_output, files_failed, unreachable, usage};
use crate::client::conn::{self as client, Client};
use crate::error::{Code, Error};
use crate::offline::output::{AtomicFile, Durability};
use crate::protocol::Format;
use crate::protocol::{FileJobSpec, FileOp, JobEntry, ReplyLine, Request};
use crate::tree_rules::with_suffix;

/// Files larger than this get a progress bar on a terminal (issue 14: "above a size, say
/// 64 MiB"): smaller ones are done before a bar would say anything.
const PROGRESS_BAR_MIN_BYTES: u64 = 64 << 20;

/// Runs one of the daemon's own commands (`ping`, `status`, `jobs`, ...): builds the
/// request, sends it, prints the outcome.
pub(super) fn run(cli: &Cli) -> Result<(), Failure> {
    let request = request_for(&cli.command);
    let mut client =
        Client::connect(&cli.socket).map_err(|err| unreachable(err, cli.keys.is_some(), false))?;
    let filter = match &cli.command {
        Command::Jobs { state, limit } => Some(JobsFilter {
            states: state.iter().map(|s| s.as_str()).collect(),
            limit: *limit,
        }),
        _ => None,
    };
    let json = cli.json;
    let errored = std::cell::Cell::new(false);
    let reply = client.request(&request, |line, reply| {
        errored.set(matches!(reply, ReplyLine::Error(_)));
        match (&filter, reply) {
            (Some(filter), ReplyLine::Jobs(_)) if json => print::raw_line(&filter.json(line)),
            _ if json => print::raw_line(line),
            _ => {}
        }
    });
    let reply = reply.map_err(|err| Failure::from(err).shown(json && errored.get()))?;
    // `status` of a job that failed exits 1 with its reason (after the line is printed).
    let failed = match &reply {
        ReplyLine::Status(entry) if entry.state == "failed" => Some(job_failed(entry)),
        _ => None,
    };
    if !json {
        match (&filter, reply) {
            (Some(filter), ReplyLine::Jobs(jobs)) => print::jobs(filter.apply(jobs)),
            (_, reply) => print::reply(&request, None, client.socket(), &reply)?,
        }
    }
    match failed {
        Some(failure) => Err(failure.shown(json)),
        None => Ok(()),
    }
}

/// Runs one file job (not a tree, not a stream) through the daemon: the input and output
/// opened here and passed as descriptors where the file system allows.
pub(super) fn run_file(cli: &Cli, cmd: &FileCmd) -> Result<(), Failure> {
    let (mut request, shown) = file_request(cmd)?;
    let json = cli.json;
    // A bar for a large file on a terminal, fed by the daemon's `progress` lines.
    let bar = !json
        && !cmd.tree.quiet
        && std::io::stderr().is_terminal()
        && std::fs::metadata(cmd.input()).is_ok_and(|m| m.len() > PROGRESS_BAR_MIN_BYTES);
    if let Request::File(spec) = &mut request {
        spec.progress = bar;
    }
    let mut display = ProgressDisplay::new(!bar);
    let mut client = Client::connect(&cli.socket)?;
    let mut passing = match &mut request {
        Request::File(spec) => PassedFiles::open(spec)?,
        _ => None,
    };
    let errored = std::cell::Cell::new(false);
    let print_json = |line: &str, reply: &ReplyLine| {
        errored.set(matches!(reply, ReplyLine::Error(_)));
        if json {
            print::raw_line(line);
        } else if let ReplyLine::Progress(progress) = reply {
            display.update(&snapshot_from(progress));
        }
    };
    let reply = match &mut passing {
        Some(files) => {
            let output = files.output.file();
            let fds = [files.input.as_fd(), output.as_fd()];
            client.request_passing(&request, &fds, print_json)
        }
        None => client.request(&request, print_json),
    };
    display.finish();
    let reply = reply.map_err(|err| Failure::from(err).shown(json && errored.get()))?;
    if let (Some(files), Request::File(spec)) = (passing, &request) {
        files.commit(spec)?;
    }
    if !json {
        print::reply(&request, Some(&shown), client.socket(), &reply)?;
    }
    if let ReplyLine::Done(done) = &reply
        && done.files_failed > 0
    {
        return Err(files_failed(done.files_failed, Some(&done.job.to_string())).shown(json));
    }
    Ok(())
}

/// What `jobs --state ... --limit N` keeps of the daemon's list. The daemon sends every job
/// it knows, in no order; this keeps the asked states, puts the live ones (running, queued)
/// first and then the newest, and cuts the list at the limit (0: no limit).
pub(super) struct JobsFilter {
    states: Vec<&'static str>,
    limit: usize,
}

/// The jobs kept, and how many more matched but were cut by the limit.
pub(super) struct KeptJobs {
    pub(super) jobs: Vec<JobEntry>,
    pub(super) left_out: usize,
    pub(super) limit: usize,
}

impl JobsFilter {
    pub(super) fn apply(&self, mut jobs: Vec<JobEntry>) -> KeptJobs {
        if !self.states.is_empty() {
            jobs.retain(|job| self.states.contains(&job.state.as_str()));
        }
        let live = |job: &JobEntry| matches!(job.state.as_str(), "running" | "queued");
        jobs.sort_by(|a, b| {
            live(b)
                .cmp(&live(a))
                .then_with(|| (b.job.seq, b.job.shard).cmp(&(a.job.seq, a.job.shard)))
        });
        let left_out = match self.limit {
            0 => 0,
            limit => jobs.len().saturating_sub(limit),
        };
        jobs.truncate(jobs.len() - left_out);
        KeptJobs {
            jobs,
            left_out,
            limit: self.limit,
        }
    }

    /// The `jobs` line with only the kept jobs (in the same order as the table), and
    /// `left_out` counting the rest; every other field as the daemon sent it.
    fn json(&self, line: &str) -> String {
        let Ok(mut value) = serde_json::from_str::<serde_json::Value>(line) else {
            return line.to_string();
        };
        let Some(list) = value.get("jobs").cloned() else {
            return line.to_string();
        };
        let Ok(entries) = serde_json::from_value::<Vec<serde_json::Value>>(list) else {
            return line.to_string();
        };
        // Filter the raw entries by the same rule, through their typed form.
        let typed: Vec<(JobEntry, serde_json::Value)> = entries
            .into_iter()
            .filter_map(|raw| Some((serde_json::from_value(raw.clone()).ok()?, raw)))
            .collect();
        let kept = self.apply(typed.iter().map(|(job, _)| job.clone()).collect());
        let raw: Vec<serde_json::Value> = kept
            .jobs
            .iter()
            .filter_map(|job| {
                typed
                    .iter()
                    .find(|(entry, _)| entry.job == job.job)
                    .map(|(_, raw)| raw.clone())
            })
            .collect();
        value["jobs"] = serde_json::Value::from(raw);
        value["left_out"] = serde_json::Value::from(kept.left_out);
        let mut text = value.to_string();
        text.push('\n');
        text
    }
}

/// `status` of a job that failed: exit 1, saying why (a daemon too old to say gets the
/// state alone).
fn job_failed(entry: &JobEntry) -> Failure {
    let code = entry.code.as_deref().unwrap_or("internal");
    let why = entry
        .message
        .as_deref()
        .unwrap_or("the daemon did not say why");
    match Code::parse(code) {
        Some(code) => Error::new(code, format!("job {} failed: {why}", entry.job)).into(),
        None => Error::new(
            Code::Internal,
            format!("job {} failed: {why} (code {code})", entry.job),
        )
        .into(),
    }
}

/// A single-file job's input and output opened by this process, to pass to the daemon as
/// descriptors: the kernel checks *our* permissions to read the input and to create a file in
/// the output's directory, and the output is ours. The daemon reads the one and fills the
/// other (an unnamed `O_TMPFILE`); this process then links it into place. Trees, and outputs
/// on file systems without `O_TMPFILE`, go by path instead.
pub(super) struct PassedFiles {
    pub(super) input: std::fs::File,
    pub(super) output: AtomicFile,
    mode: u32,
    mtime: Option<std::time::SystemTime>,
}

impl PassedFiles {
    /// Opens both files and marks `spec` as passing descriptors; None when the output's file
    /// system has no `O_TMPFILE`, so the request goes by path.
    pub(super) fn open(spec: &mut FileJobSpec) -> Result<Option<PassedFiles>, Failure> {
        use std::os::unix::fs::MetadataExt;
        let input = std::fs::File::open(&spec.input)
            .map_err(|e| Failure::from(Error::io("open", &spec.input, e)))?;
        let meta = input
            .metadata()
            .map_err(|e| Failure::from(Error::io("stat", &spec.input, e)))?;
        let in_place = spec.op == FileOp::Rewrap && spec.overwrite && spec.input == spec.output;
        if !in_place
            && let Ok(out) = std::fs::metadata(&spec.output)
            && (out.dev(), out.ino()) == (meta.dev(), meta.ino())
        {
            return Err(Error::new(
                Code::BadRequest,
                format!(
                    "{} is the input itself; inputs are never modified, choose another output",
                    spec.output.display()
                ),
            )
            .into());
        }
        let output = AtomicFile::create(&spec.output, spec.overwrite)?;
        if !output.is_unnamed() {
            return Ok(None);
        }
        spec.fds = true;
        Ok(Some(PassedFiles {
            input,
            output,
            mode: meta.mode() & 0o777,
            mtime: meta.modified().ok(),
        }))
    }

    /// After `done`: gives the output the input's mode and time, as the daemon does for
    /// jobs by path, makes it durable (file and directory, whatever the daemon's fsync
    /// policy: this process cannot know it) and links it into place.
    pub(super) fn commit(mut self, spec: &FileJobSpec) -> Result<(), Failure> {
        if let Some(mtime) = self.mtime {
            self.output.file().set_modified(mtime).map_err(|e| {
                Failure::from(Error::io("set the modification time of", &spec.output, e))
            })?;
        }
        self.output
            .commit(self.mode, spec.overwrite, Durability::Fsync)?;
        Ok(())
    }
}

/// The request for one of the daemon's own commands.
fn request_for(command: &Command) -> Request {
    match command {
        Command::Ping => Request::Ping,
        Command::Status { job } => Request::Status { job: *job },
        Command::Cancel { job } => Request::Cancel { job: *job },
        Command::Jobs { .. } => Request::Jobs,
        Command::Stats => Request::Stats,
        Command::Keys => Request::Keys,
        Command::Reload => Request::Reload,
        _ => unreachable!("file jobs, keygen, verify, inspect and completions are run elsewhere"),
    }
}

/// The request for one file job (one input, not a tree), and the paths to show.
pub(super) fn file_request(cmd: &FileCmd) -> Result<(Request, Shown), Failure> {
    daemon_settings(cmd.format, cmd.chunk_log2)?;
    let input = cmd.input().to_path_buf();
    let (output, overwrite) = match cmd.op {
        FileOp::Encrypt => (
            cmd.output.clone().unwrap_or_else(|| with_suffix(&input)),
            cmd.force,
        ),
        FileOp::Decrypt => (decrypt_output(&input, cmd.output.as_deref())?, cmd.force),
        FileOp::Rewrap => match &cmd.output {
            Some(output) => (output.clone(), cmd.force),
            None => {
                debug_assert!(cmd.in_place, "clap requires -o or --in-place");
                (input.clone(), true)
            }
        },
        FileOp::Verify => return Err(super::verify_writes_nothing()),
    };
    let cwd = current_dir()?;
    let abs_input = wire_path(&cwd, &input)?;
    let abs_output = wire_path(&cwd, &output)?;
    if cmd.op == FileOp::Rewrap && !cmd.in_place && abs_input == abs_output {
        return Err(usage(
            format!("{} is the input itself", output.display()),
            "use --in-place to replace the input",
        ));
    }
    let mut spec = FileJobSpec::new(cmd.op, abs_input, abs_output);
    spec.key = cmd.key.clone();
    spec.overwrite = overwrite;
    let shown = Shown {
        verb: print::verb(cmd.op),
        input,
        output,
    };
    Ok((Request::File(spec), shown))
}

/// A path as the daemon needs it: absolute (lexically, against our working directory) and
/// UTF-8, since the wire carries paths as JSON strings.
pub(super) fn wire_path(cwd: &Path, path: &Path) -> Result<PathBuf, Failure> {
    if path.to_str().is_none() {
        return Err(usage(
            format!(
                "{} is not UTF-8, so it cannot be named to the daemon",
                path.display()
            ),
            "rename it, or pass --keys FILE to work on it in this process",
        ));
    }
    Ok(client::absolute(cwd, path))
}

/// Refuses what only the offline mode does: the openssl format (the daemon seals ringcrypt
/// only) and a chunk size of the user's choosing (the daemon uses its own).
pub(super) fn daemon_settings(format: Format, chunk_log2: Option<u8>) -> Result<(), Failure> {
    if format == Format::Openssl {
        return Err(usage(
            "the daemon seals the ringcrypt format only",
            "pass --keys FILE to write the openssl format in this process",
        ));
    }
    if chunk_log2.is_some() {
        return Err(usage(
            "--chunk-log2 works only offline; the daemon uses its own settings",
            "pass --keys FILE to do this job in this process",
        ));
    }
    Ok(())
}

/// Our working directory, against which relative paths are made absolute for the daemon.
pub(super) fn current_dir() -> Result<PathBuf, Failure> {
    std::env::current_dir().map_err(|e| {
        Failure::from(Error::new(
            Code::IoError,
            format!("cannot find the current directory: {e}"),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, state: &str) -> JobEntry {
        serde_json::from_value(serde_json::json!({"job": id, "state": state})).unwrap()
    }

    #[test]
    fn jobs_keep_the_asked_states_live_first_then_newest() {
        let jobs = vec![
            job("0-1", "done"),
            job("1-9", "failed"),
            job("0-7", "running"),
            job("1-2", "done"),
            job("0-3", "queued"),
            job("0-12", "done"),
        ];
        let all = JobsFilter {
            states: vec![],
            limit: 4,
        }
        .apply(jobs.clone());
        let order: Vec<String> = all.jobs.iter().map(|j| j.job.to_string()).collect();
        assert_eq!(order, ["0-7", "0-3", "0-12", "1-9"]);
        assert_eq!(all.left_out, 2);

        let done = JobsFilter {
            states: vec!["done"],
            limit: 0,
        }
        .apply(jobs);
        let order: Vec<String> = done.jobs.iter().map(|j| j.job.to_string()).collect();
        assert_eq!(order, ["0-12", "1-2", "0-1"]);
        assert_eq!(done.left_out, 0);
    }
}
