//! The `ringcrypt` command line: parse arguments, run, map the outcome to the exit codes of
//! README "Using it" (0 success, 1 the job failed, 2 usage error, 3 the daemon could not be reached).
//!
//! Without `--keys`, file jobs and the daemon's own commands go to `ringcryptd` over its socket
//! (the connection lives in [`crate::client`]); with `--keys`, file jobs run in this process
//! ([`crate::offline`]). Errors print as `error: ...`, followed by `hint: ...` where a next step
//! is clear. With `--json`, stdout carries JSON lines only: every reply line from the daemon
//! as received (`verify` and `inspect`: their own lines), and when the client itself refuses
//! (a usage error, an output that exists, an unreachable daemon) one `error` line, so a
//! script always gets a final line. A failure a daemon line already said is not repeated.
//!
//! With `-r`, a file job is a directory tree: offline it runs in [`crate::offline::tree`], through the
//! daemon it is one recursive request whose `progress` lines drive the same display. Either
//! way the outcome is one [`crate::offline::tree::Summary`], printed the same way.
//!
//! The rooms of the command line:
//! - `args`: the clap definitions and every help text.
//! - `daemon`: a command through the daemon: its request, the round trip, a single file's
//!   descriptors passed and its output linked here.
//! - `offline`: a single-file job in this process (`--keys`).
//! - `tree`: `-r`, both ways: the plan, the progress display, the summary.
//! - `pipe`: `-` and other streams as input or output (offline; refused through the daemon
//!   for now).
//! - `many`: several inputs in one invocation, offline or as one batch on one connection.
//! - `verify`, `inspect`: checking and describing sealed files.
//! - `keygen`: a new key ring entry, printed or written to a new 0600 file.
//! - `print`: what the user reads of a reply or an outcome, and the `error:` / `hint:` lines.
//!
//! This file holds the dispatch, the `Failure` every room returns with its exit code, the
//! file job as the command line gives it (`FileCmd`), and the one naming rule the rooms
//! share (decrypt's default output). It does no job itself.

mod args;
mod daemon;
mod inspect;
mod keygen;
mod many;
mod offline;
mod pipe;
mod print;
mod tree;
mod verify;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::client::conn::{ClientError, Unreachable};
use crate::error::{Code, Error};
use crate::protocol::{FileOp, Format};
use crate::tree_rules::without_suffix;
use clap::{CommandFactory, Parser};

pub use args::Cli;
use args::{Command, TreeArgs};
use tree::TreePlan;

/// Exit code: the job failed; the message says why.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: the command line was wrong.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the daemon could not be reached.
pub const EXIT_UNREACHABLE: u8 = 3;

/// A failure with its exit code and an optional hint.
struct Failure {
    exit: u8,
    error: String,
    hint: Option<String>,
    /// The error's wire code, for the `--json` error line (`usage` for usage errors).
    code: &'static str,
    /// With `--json`, a line already on stdout says this (the daemon's `error` or `done`).
    json_shown: bool,
}

impl Failure {
    /// The same failure, marked as already shown on stdout by a `--json` line.
    fn shown(mut self, shown: bool) -> Failure {
        self.json_shown |= shown;
        self
    }
}

impl From<Error> for Failure {
    fn from(err: Error) -> Failure {
        let hint = match err.code {
            Code::AuthFailed => Some(
                "nothing was written; the file is damaged or was not made with this key ring"
                    .into(),
            ),
            Code::Exists => Some("pass --force to replace it, or -o to write elsewhere".into()),
            Code::UnknownKey => Some("add the key the file was sealed with to the key ring".into()),
            _ => None,
        };
        Failure {
            exit: EXIT_FAILED,
            error: format!("{} [{}]", err.message, err.code),
            hint,
            code: err.code.as_str(),
            json_shown: false,
        }
    }
}

/// A usage error (exit 2), with the hint that gets past it.
/// `verify` as a file job that writes an output: the command line never makes one (verify
/// has its own command), so this answers a caller that asks anyway.
fn verify_writes_nothing() -> Failure {
    usage(
        "verify writes no output",
        "run `ringcrypt verify FILE...` or `ringcrypt verify -r DIR`",
    )
}

fn usage(error: impl Into<String>, hint: impl Into<String>) -> Failure {
    Failure {
        exit: EXIT_USAGE,
        error: error.into(),
        hint: Some(hint.into()),
        code: "usage",
        json_shown: false,
    }
}

/// The failure of a daemon that could not be reached, with the hint that fits why: an
/// unprivileged caller is not told to start the daemon, and `--keys` is suggested only when
/// it was not given and the command can use it.
fn unreachable(err: ClientError, keys_given: bool, offline_ok: bool) -> Failure {
    let ClientError::Unreachable { reason, .. } = &err else {
        return Failure::from(err);
    };
    let mut hint = match reason {
        Unreachable::PermissionDenied => "ask the daemon's administrator to add you to the \
             group that owns its socket (then log in again)"
            .to_string(),
        Unreachable::NoAnswer => "the daemon is running but stuck or busy; check its log \
             (journalctl -u ringcryptd) or try again"
            .to_string(),
        Unreachable::NotRunning | Unreachable::Other => "start it with `ringcryptd --dev`, or \
             set RINGCRYPT_SOCKET / --socket to where it listens"
            .to_string(),
    };
    if offline_ok && !keys_given {
        hint.push_str(" (or pass --keys FILE to work without a daemon)");
    }
    if keys_given && !offline_ok {
        hint.push_str("; this command always asks the daemon, --keys does not apply to it");
    }
    Failure {
        exit: EXIT_UNREACHABLE,
        error: err.to_string(),
        hint: Some(hint),
        code: "unreachable",
        json_shown: false,
    }
}

impl From<ClientError> for Failure {
    fn from(err: ClientError) -> Failure {
        match err {
            ClientError::Unreachable { .. } => unreachable(err, false, true),
            ClientError::Failed(err) => err.into(),
        }
    }
}

/// The failure of a job in which `failed` files failed (of the daemon's job `job`).
fn files_failed(failed: u64, job: Option<&str>) -> Failure {
    let of_job = job.map(|job| format!(" of job {job}")).unwrap_or_default();
    Failure {
        exit: EXIT_FAILED,
        error: format!("{}{of_job} failed", print::count(failed, "file", "files")),
        hint: None,
        code: "failed",
        json_shown: false,
    }
}

/// The client's whole command line, as clap defines it (for its manual pages and completions).
pub fn command() -> clap::Command {
    Cli::command()
}

/// Runs the client with the process's arguments.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return print::clap_error(err),
    };
    let json = cli.json;
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) if failure.exit == pipe::EXIT_QUIET => ExitCode::SUCCESS,
        Err(failure) => {
            if json && !failure.json_shown {
                print::json_failure(&failure);
            }
            print::failure(&failure);
            ExitCode::from(failure.exit)
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    if let Some(cmd) = FileCmd::from_command(&cli.command) {
        return run_file(&cli, &cmd);
    }
    match &cli.command {
        Command::Keygen {
            name,
            output,
            force,
        } => keygen::keygen(name.as_deref(), output.as_deref(), *force),
        Command::Completions { shell } => {
            let mut stdout = std::io::stdout().lock();
            clap_complete::generate(*shell, &mut Cli::command(), "ringcrypt", &mut stdout);
            Ok(())
        }
        Command::Verify {
            inputs,
            recursive,
            quiet,
        } => verify::run(&cli, inputs, *recursive, *quiet),
        Command::Inspect { inputs } => inspect::run(&cli, inputs),
        Command::Encrypt { .. } | Command::Decrypt { .. } | Command::Rewrap { .. } => {
            unreachable!("file commands are dispatched by FileCmd")
        }
        Command::Ping
        | Command::Status { .. }
        | Command::Cancel { .. }
        | Command::Jobs { .. }
        | Command::Stats
        | Command::Keys
        | Command::Reload => daemon::run(&cli),
    }
}

/// An encrypt, decrypt or rewrap: several inputs, a stream, a tree, or one file; offline
/// with `--keys`, through the daemon otherwise.
fn run_file(cli: &Cli, cmd: &FileCmd) -> Result<(), Failure> {
    if cmd.inputs.len() > 1 {
        if let Some(partition) = cmd.tree.partition {
            return Err(usage(
                format!(
                    "--partition {partition} splits one tree; {} inputs were given",
                    cmd.inputs.len()
                ),
                "run one command per input directory, each with --partition",
            ));
        }
        return many::run(cli, cmd);
    }
    if let Some(ends) = pipe::Ends::of(cmd)? {
        return match cli.keys.is_some() {
            true => pipe::run_offline(cli, cmd, ends),
            false => pipe::run_daemon(cli, cmd, ends),
        };
    }
    if let Some(plan) = TreePlan::from_cmd(cmd)? {
        return match cli.keys.is_some() {
            true => tree::run_offline(cli, &plan),
            false => tree::run_daemon(cli, &plan),
        };
    }
    refuse_directory(cmd, cmd.input())?;
    match cli.keys.is_some() {
        true => offline::run(cli, cmd),
        false => daemon::run_file(cli, cmd),
    }
}

/// A directory named without `-r`: a usage error that says how to do what was meant.
fn refuse_directory(cmd: &FileCmd, input: &Path) -> Result<(), Failure> {
    if std::fs::metadata(input).is_ok_and(|meta| meta.is_dir()) {
        return Err(usage(
            format!("{} is a directory", input.display()),
            format!(
                "pass -r to {} every file under it (ringcrypt {} -r {})",
                cmd.op.as_str(),
                cmd.op.as_str(),
                input.display()
            ),
        ));
    }
    Ok(())
}

/// An encrypt, decrypt or rewrap as the command line gives it, whatever the subcommand.
#[derive(Clone, Debug)]
struct FileCmd {
    op: FileOp,
    /// At least one.
    inputs: Vec<PathBuf>,
    output: Option<PathBuf>,
    /// rewrap only.
    in_place: bool,
    key: Option<String>,
    /// encrypt only; ringcrypt otherwise.
    format: Format,
    /// encrypt and rewrap only.
    chunk_log2: Option<u8>,
    force: bool,
    tree: TreeArgs,
}

impl FileCmd {
    fn from_command(command: &Command) -> Option<FileCmd> {
        let cmd =
            |op, inputs: &Vec<PathBuf>, output: &Option<PathBuf>, key: &Option<String>| FileCmd {
                op,
                inputs: inputs.clone(),
                output: output.clone(),
                in_place: false,
                key: key.clone(),
                format: Format::Ringcrypt,
                chunk_log2: None,
                force: false,
                tree: TreeArgs::default(),
            };
        Some(match command {
            Command::Encrypt {
                inputs,
                output,
                key,
                format,
                chunk_log2,
                force,
                tree,
            } => FileCmd {
                format: format.format(),
                chunk_log2: *chunk_log2,
                force: *force,
                tree: *tree,
                ..cmd(FileOp::Encrypt, inputs, output, key)
            },
            Command::Decrypt {
                inputs,
                output,
                key,
                force,
                tree,
            } => FileCmd {
                force: *force,
                tree: *tree,
                ..cmd(FileOp::Decrypt, inputs, output, key)
            },
            Command::Rewrap {
                inputs,
                output,
                in_place,
                key,
                chunk_log2,
                force,
                tree,
            } => FileCmd {
                in_place: *in_place,
                chunk_log2: *chunk_log2,
                force: *force,
                tree: *tree,
                ..cmd(FileOp::Rewrap, inputs, output, key)
            },
            _ => return None,
        })
    }

    /// The first (for a single-input command, the only) input.
    fn input(&self) -> &Path {
        &self.inputs[0]
    }

    /// This command for one of its inputs, written to `output`.
    fn for_input(&self, input: &Path, output: Option<PathBuf>) -> FileCmd {
        FileCmd {
            inputs: vec![input.to_path_buf()],
            output,
            ..self.clone()
        }
    }
}

/// Decrypt's output: `-o`, or the input without `.rcrypt`; never a guess.
fn decrypt_output(input: &Path, output: Option<&Path>) -> Result<PathBuf, Failure> {
    match output {
        Some(output) => Ok(output.to_path_buf()),
        None => without_suffix(input).ok_or_else(|| {
            usage(
                format!(
                    "cannot guess an output name: {} does not end in .rcrypt",
                    input.display()
                ),
                "pass -o OUT",
            )
        }),
    }
}
