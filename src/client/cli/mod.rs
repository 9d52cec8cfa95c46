//! The `ringcrypt` command line: parse arguments, run, map the outcome to the exit codes of
//! README "Using it" (0 success, 1 the job failed, 2 usage error, 3 the daemon could not be reached).
//!
//! Without `--keys`, file jobs and the daemon's own commands go to `ringcryptd` over its socket
//! (the connection lives in [`crate::client`]); with `--keys`, file jobs run in this process
//! ([`crate::offline`]). Errors print as `error: ...`, followed by `hint: ...` where a next step
//! is clear. With `--json`, every reply line from the daemon goes to stdout as received, and
//! nothing else does.
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
//! - `keygen`: a new key ring entry.
//! - `print`: what the user reads of a reply or an outcome, and the `error:` / `hint:` lines.
//!
//! This file holds the dispatch, the `Failure` every room returns with its exit code, and the
//! one naming rule the rooms share (decrypt's default output). It does no job itself.

mod args;
mod daemon;
mod keygen;
mod offline;
mod print;
mod tree;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::client::conn::ClientError;
use crate::error::{Code, Error};
use crate::tree_rules::without_suffix;
use clap::{CommandFactory, Parser};

pub use args::Cli;
use args::Command;
use tree::TreePlan;

/// Exit code: the job failed; the message says why.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: the command line was wrong.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the daemon could not be reached.
pub const EXIT_UNREACHABLE: u8 = 3;

/// The hint printed when the daemon cannot be reached.
const UNREACHABLE_HINT: &str = "start it with `ringcryptd --dev`, or set RINGCRYPT_SOCKET / \
     --socket to where it listens (or pass --keys FILE to work without a daemon)";

/// A failure with its exit code and an optional hint.
struct Failure {
    exit: u8,
    error: String,
    hint: Option<String>,
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
        }
    }
}

/// A usage error (exit 2), with the hint that gets past it.
fn usage(error: impl Into<String>, hint: impl Into<String>) -> Failure {
    Failure {
        exit: EXIT_USAGE,
        error: error.into(),
        hint: Some(hint.into()),
    }
}

impl From<ClientError> for Failure {
    fn from(err: ClientError) -> Failure {
        match err {
            ClientError::Unreachable { .. } => Failure {
                exit: EXIT_UNREACHABLE,
                error: err.to_string(),
                hint: Some(UNREACHABLE_HINT.into()),
            },
            ClientError::Failed(err) => err.into(),
        }
    }
}

/// The failure of a job in which `failed` files failed (of the daemon's job `job`).
fn files_failed(failed: u64, job: Option<&str>) -> Failure {
    let of_job = job.map(|job| format!(" of job {job}")).unwrap_or_default();
    Failure {
        exit: EXIT_FAILED,
        error: format!("{failed} file(s){of_job} failed"),
        hint: None,
    }
}

/// The client's whole command line, as clap defines it (for its manual pages and completions).
pub fn command() -> clap::Command {
    Cli::command()
}

/// Runs the client with the process's arguments.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            print::failure(&failure);
            ExitCode::from(failure.exit)
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    if let Some(plan) = TreePlan::from_command(&cli.command)? {
        return match cli.keys.is_some() {
            true => tree::run_offline(&cli, &plan),
            false => tree::run_daemon(&cli, &plan),
        };
    }
    match &cli.command {
        Command::Keygen { name } => keygen::keygen(name.as_deref()),
        Command::Completions { shell } => {
            let mut stdout = std::io::stdout().lock();
            clap_complete::generate(*shell, &mut Cli::command(), "ringcrypt", &mut stdout);
            Ok(())
        }
        Command::Encrypt { .. } | Command::Decrypt { .. } | Command::Rewrap { .. } => {
            match cli.keys.is_some() {
                true => offline::run(&cli),
                false => daemon::run(cli),
            }
        }
        Command::Ping
        | Command::Status { .. }
        | Command::Cancel { .. }
        | Command::Jobs
        | Command::Stats
        | Command::Keys
        | Command::Reload => daemon::run(cli),
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
