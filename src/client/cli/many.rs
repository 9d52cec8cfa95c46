//! Several inputs in one invocation: `ringcrypt encrypt a b c [-r photos] [-o DIR]`. Each
//! input is the job it would be alone (a file, or with `-r` a tree), with `-o DIR` meaning
//! "into this existing directory, under the input's own name" (the tree rules name it:
//! `.rcrypt` appended or stripped). Offline the files run one per core, then each tree in
//! turn (on every core); through the daemon they go as requests on one connection, up to
//! [`IN_FLIGHT`] at a time, so the shards work on several at once. Either way there is one
//! progress display and one summary, and exit 1 when anything failed.
//!
//! Everything that can be known before the first job is checked first, so a usage error
//! creates nothing: a stream among the inputs, an `-o` that is not a directory, a directory
//! without `-r`, an input whose output cannot be named, two inputs with one output.
//!
//! What this room does not do: the single jobs themselves (`daemon`, `offline`, `tree`).

use std::collections::{HashMap, HashSet};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::args::Cli;
use super::daemon::{PassedFiles, daemon_settings, file_request};
use super::offline::{job_for, load_ring, no_json, openssl_warning, run_one};
use super::tree::{ProgressDisplay, TreePlan, report_summary, snapshot_from, summary_from};
use super::{Failure, FileCmd, files_failed, print, refuse_directory, usage};
use crate::client::conn::Client;
use crate::error::{Code, Error};
use crate::offline::tree::{self, Snapshot, Summary};
use crate::protocol::{Format, MAX_FAILURES_REPORTED, ReplyLine, Request};
use crate::tree_rules::output_name;

/// Requests in flight on the one connection: enough to keep every shard busy with small
/// files, few enough that the descriptors held (two per file) stay far below any limit.
const IN_FLIGHT: usize = 16;

/// One input's job.
enum Item {
    File { cmd: FileCmd, size: u64 },
    Tree(TreePlan),
}

impl Item {
    fn input(&self) -> &Path {
        match self {
            Item::File { cmd, .. } => cmd.input(),
            Item::Tree(plan) => &plan.input,
        }
    }
}

pub(super) fn run(cli: &Cli, cmd: &FileCmd) -> Result<(), Failure> {
    let items = plan(cmd)?;
    let headline = match &cmd.output {
        Some(dir) => format!(
            "{} {} inputs -> {}",
            print::verb(cmd.op),
            items.len(),
            dir.display()
        ),
        None => format!("{} {} inputs", print::verb(cmd.op), items.len()),
    };
    let mut progress = Combined::new(&items, cmd.tree.quiet || cli.json);
    let (summary, job) = match cli.keys.is_some() {
        true => (run_offline(cli, cmd, &items, &mut progress)?, None),
        false => run_daemon(cli, cmd, &items, &mut progress)?,
    };
    progress.display.finish();
    if cli.json {
        return match summary.files_failed {
            0 => Ok(()),
            failed => Err(files_failed(failed, None).shown(true)),
        };
    }
    report_summary(&headline, &summary, job.as_deref())
}

/// The items of `cmd`, every check that needs no job done first.
fn plan(cmd: &FileCmd) -> Result<Vec<Item>, Failure> {
    if let Some(dir) = &cmd.output
        && !std::fs::metadata(dir).is_ok_and(|meta| meta.is_dir())
    {
        return Err(usage(
            format!(
                "with several inputs, -o names an existing directory, and {} is not one",
                dir.display()
            ),
            format!(
                "create it first (mkdir -p {}), or give one input",
                dir.display()
            ),
        ));
    }
    let mut items = Vec::new();
    let mut outputs = HashSet::new();
    for input in &cmd.inputs {
        if input.as_os_str() == "-" || super::pipe::Ends::of(&cmd.for_input(input, None))?.is_some()
        {
            return Err(usage(
                format!(
                    "{} is a stream; a stream can only be the one input",
                    input.display()
                ),
                "give the stream in a command of its own",
            ));
        }
        let meta = std::fs::metadata(input).ok();
        let is_dir = meta.as_ref().is_some_and(|m| m.is_dir());
        if !cmd.tree.recursive {
            refuse_directory(cmd, input)?;
        }
        let output = match &cmd.output {
            Some(dir) => Some(dir.join(named_in_dir(cmd, input, dir)?)),
            None => None,
        };
        let mut one = cmd.for_input(input, output);
        one.tree.recursive = is_dir;
        let item = match TreePlan::from_cmd(&one)? {
            Some(plan) => Item::Tree(plan),
            None => Item::File {
                size: meta.map_or(0, |m| m.len()),
                cmd: one,
            },
        };
        let target = match &item {
            Item::Tree(plan) => plan.output.clone(),
            Item::File { cmd, .. } => job_for(cmd)?.output,
        };
        if !outputs.insert(target.clone()) {
            return Err(usage(
                format!(
                    "two inputs would be written to {}; the second would fail or replace the \
                     first",
                    target.display()
                ),
                "rename one of them, or run them separately with -o",
            ));
        }
        items.push(item);
    }
    Ok(items)
}

/// The name an input gets in the `-o` directory: its own, by the tree rules.
fn named_in_dir(cmd: &FileCmd, input: &Path, dir: &Path) -> Result<PathBuf, Failure> {
    let name = input.file_name().ok_or_else(|| {
        usage(
            format!(
                "cannot name an output in {} for {}",
                dir.display(),
                input.display()
            ),
            "name the input by its own name (not . or ..)",
        )
    })?;
    output_name(cmd.op, name)
        .map(PathBuf::from)
        .map_err(|reason| {
            usage(
                format!(
                    "cannot name {}'s output in {}: {reason}",
                    input.display(),
                    dir.display()
                ),
                "decrypt it on its own with -o OUT",
            )
        })
}

/// One progress display over every input: finished inputs, plus the trees running now.
struct Combined {
    display: ProgressDisplay,
    started: Instant,
    files_total: u64,
    bytes_total: u64,
    files_done: u64,
    bytes_done: u64,
    /// The latest snapshot of each tree running, by its slot.
    trees: HashMap<u64, Snapshot>,
    /// Trees not yet finished: until they are walked, totals may grow.
    trees_left: usize,
}

impl Combined {
    fn new(items: &[Item], quiet: bool) -> Combined {
        let mut combined = Combined {
            display: ProgressDisplay::new(quiet),
            started: Instant::now(),
            files_total: 0,
            bytes_total: 0,
            files_done: 0,
            bytes_done: 0,
            trees: HashMap::new(),
            trees_left: 0,
        };
        for item in items {
            match item {
                Item::File { size, .. } => {
                    combined.files_total += 1;
                    combined.bytes_total += size;
                }
                Item::Tree(_) => combined.trees_left += 1,
            }
        }
        combined
    }

    fn file_done(&mut self, size: u64) {
        self.files_done += 1;
        self.bytes_done += size;
        self.show();
    }

    fn tree(&mut self, slot: u64, snapshot: Snapshot) {
        self.trees.insert(slot, snapshot);
        self.show();
    }

    fn tree_done(&mut self, slot: u64, summary: &Summary) {
        self.trees.remove(&slot);
        let files = summary.files_ok + summary.files_failed + summary.files_skipped;
        self.files_total += files;
        self.files_done += files;
        self.bytes_total += summary.bytes_in;
        self.bytes_done += summary.bytes_in;
        self.trees_left = self.trees_left.saturating_sub(1);
        self.show();
    }

    fn show(&mut self) {
        let live = self.trees.values();
        let (mut snapshot, mut counting) = (
            Snapshot {
                files_done: self.files_done,
                files_total: self.files_total,
                bytes_done: self.bytes_done,
                bytes_total: self.bytes_total,
                ..Snapshot::default()
            },
            self.trees_left > self.trees.len(),
        );
        for tree in live {
            snapshot.files_done += tree.files_done;
            snapshot.files_total += tree.files_total;
            snapshot.bytes_done += tree.bytes_done;
            snapshot.bytes_total += tree.bytes_total;
            counting |= !tree.totals_final;
        }
        let micros = self.started.elapsed().as_micros().max(1);
        snapshot.rate_bytes_per_sec =
            u64::try_from(u128::from(snapshot.bytes_done) * 1_000_000 / micros).unwrap_or(u64::MAX);
        snapshot.totals_final = !counting;
        self.display.update(&snapshot);
    }
}

/// Adds a finished tree's summary to the run's.
fn merge(into: &mut Summary, from: Summary) {
    into.bytes_in += from.bytes_in;
    into.bytes_out += from.bytes_out;
    into.files_ok += from.files_ok;
    into.files_failed += from.files_failed;
    into.files_skipped += from.files_skipped;
    into.failures_omitted += from.failures_omitted;
    into.skipped_omitted += from.skipped_omitted;
    for failure in from.failures {
        push_failure(into, failure);
    }
    for skipped in from.skipped {
        if into.skipped.len() < MAX_FAILURES_REPORTED {
            into.skipped.push(skipped);
        } else {
            into.skipped_omitted += 1;
        }
    }
}

fn push_failure(into: &mut Summary, failure: tree::Failure) {
    if into.failures.len() < MAX_FAILURES_REPORTED {
        into.failures.push(failure);
    } else {
        into.failures_omitted += 1;
    }
}

/// A whole input failed (not counted as files yet).
fn input_failed(into: &mut Summary, input: &Path, err: Error) {
    into.files_failed += 1;
    push_failure(
        into,
        tree::Failure {
            path: input.to_path_buf(),
            code: err.code,
            message: err.message,
        },
    );
}

/// A failure of the command line's own making for one input, as an error for the summary.
fn as_error(failure: Failure) -> Error {
    let code = Code::parse(failure.code).unwrap_or(Code::BadRequest);
    let suffix = format!(" [{}]", failure.code);
    let message = failure
        .error
        .strip_suffix(&suffix)
        .unwrap_or(&failure.error)
        .to_string();
    Error::new(code, message)
}

fn run_offline(
    cli: &Cli,
    cmd: &FileCmd,
    items: &[Item],
    progress: &mut Combined,
) -> Result<Summary, Failure> {
    no_json(cli)?;
    let ring = load_ring(cli.keys.as_deref())?;
    if cmd.format == Format::Openssl {
        openssl_warning(cmd.output.as_deref().unwrap_or(Path::new("the outputs")));
    }
    let mut summary = Summary::default();
    run_files_offline(&ring, items, &mut summary, progress);
    for (slot, item) in items.iter().enumerate() {
        let Item::Tree(plan) = item else { continue };
        let slot = slot as u64;
        match tree::run(&ring, &plan.job(), |s| progress.tree(slot, *s)) {
            Ok(done) => {
                progress.tree_done(slot, &done);
                merge(&mut summary, done);
            }
            Err(err) => {
                progress.tree_done(slot, &Summary::default());
                input_failed(&mut summary, &plan.input, err);
            }
        }
    }
    Ok(summary)
}

/// The file inputs, offline, one worker per core (each file is one stream, on one core);
/// results are counted and shown here as they come.
fn run_files_offline(
    ring: &crate::crypto::keys::KeyRing,
    items: &[Item],
    summary: &mut Summary,
    progress: &mut Combined,
) {
    let files: Vec<(&FileCmd, u64)> = items
        .iter()
        .filter_map(|item| match item {
            Item::File { cmd, size } => Some((cmd, *size)),
            Item::Tree(_) => None,
        })
        .collect();
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let (results, received) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        for _ in 0..workers.min(files.len()) {
            let results = results.clone();
            let (files, next) = (&files, &next);
            scope.spawn(move || {
                loop {
                    let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((cmd, size)) = files.get(index) else {
                        return;
                    };
                    let outcome = run_one(ring, cmd, |_| {}).map(|(outcome, _)| outcome);
                    if results.send((*cmd, *size, outcome)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(results);
        for (cmd, size, outcome) in received {
            match outcome {
                Ok(outcome) => {
                    summary.files_ok += 1;
                    summary.bytes_in += outcome.bytes_in;
                    summary.bytes_out += outcome.bytes_out;
                }
                Err(failure) => input_failed(summary, cmd.input(), as_error(failure)),
            }
            progress.file_done(size);
        }
    });
}

/// A request in flight: which item, and a single file's descriptors to commit after `done`.
struct InFlight {
    item: usize,
    passing: Option<(PassedFiles, crate::protocol::FileJobSpec)>,
}

fn run_daemon(
    cli: &Cli,
    cmd: &FileCmd,
    items: &[Item],
    progress: &mut Combined,
) -> Result<(Summary, Option<String>), Failure> {
    daemon_settings(cmd.format, cmd.chunk_log2)?;
    let mut requests = Vec::with_capacity(items.len());
    for item in items {
        requests.push(match item {
            Item::File { cmd, .. } => file_request(cmd)?.0,
            Item::Tree(plan) => plan.request()?,
        });
    }
    let mut client = Client::connect(&cli.socket)?;
    let mut summary = Summary::default();
    let mut flying: HashMap<u64, InFlight> = HashMap::new();
    let mut next = 0;
    loop {
        while flying.len() < IN_FLIGHT && next < items.len() {
            let index = next;
            next += 1;
            match send(&mut client, &mut requests[index]) {
                Ok((id, passing)) => {
                    flying.insert(
                        id,
                        InFlight {
                            item: index,
                            passing,
                        },
                    );
                }
                Err(failure) => {
                    input_failed(&mut summary, items[index].input(), as_error(failure));
                }
            }
        }
        if flying.is_empty() {
            break;
        }
        let (text, id, line) = client.next_reply()?;
        if cli.json {
            print::raw_line(&text);
        }
        let Some(id) = id.as_ref().and_then(serde_json::Value::as_u64) else {
            if let ReplyLine::Error(err) = line {
                // A line the daemon could not read an id from: it cannot be matched to an
                // input, so the run cannot go on reliably.
                return Err(Failure::from(err).shown(cli.json));
            }
            continue;
        };
        let Some(flight) = flying.get(&id) else {
            continue;
        };
        let item = &items[flight.item];
        match line {
            ReplyLine::Progress(p) => progress.tree(id, snapshot_from(&p)),
            ReplyLine::Done(done) => {
                let flight = flying.remove(&id).expect("looked up above");
                match item {
                    Item::Tree(_) => {
                        let done = summary_from(done);
                        progress.tree_done(id, &done);
                        merge(&mut summary, done);
                    }
                    Item::File { size, .. } => {
                        let committed = match flight.passing {
                            Some((files, spec)) => files.commit(&spec).map_err(as_error),
                            None => Ok(()),
                        };
                        match committed {
                            Ok(()) => {
                                summary.files_ok += 1;
                                summary.bytes_in += done.bytes_in;
                                summary.bytes_out += done.bytes_out;
                            }
                            Err(err) => input_failed(&mut summary, item.input(), err),
                        }
                        progress.file_done(*size);
                    }
                }
            }
            ReplyLine::Error(err) => {
                flying.remove(&id);
                match item {
                    Item::Tree(_) => progress.tree_done(id, &Summary::default()),
                    Item::File { size, .. } => progress.file_done(*size),
                }
                input_failed(&mut summary, item.input(), err);
            }
            _ => {}
        }
    }
    Ok((summary, None))
}

/// Sends one request: a single file's descriptors opened and passed where they can be.
fn send(
    client: &mut Client,
    request: &mut Request,
) -> Result<(u64, Option<(PassedFiles, crate::protocol::FileJobSpec)>), Failure> {
    let passing = match request {
        Request::File(spec) if !spec.recursive => PassedFiles::open(spec)?,
        _ => None,
    };
    let id = match (&passing, &*request) {
        (Some(files), _) => {
            let fds = [files.input.as_fd(), files.output.file_ref().as_fd()];
            client.send(request, &fds)?
        }
        (None, _) => client.send(request, &[])?,
    };
    let id = id
        .value()
        .as_u64()
        .expect("this client numbers its requests");
    let spec = match request {
        Request::File(spec) => spec.clone(),
        _ => unreachable!("only file jobs are sent"),
    };
    Ok((id, passing.map(|files| (files, spec))))
}
