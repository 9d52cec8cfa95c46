//! The `ringcryptd` daemon. Everything lives in `ringcrypt::daemon`; this only runs it and
//! maps failure to an exit code (1: could not start or failed; 2: usage, from clap; with
//! `--check-config`, every problem is 1). `--completions SHELL` prints a completion script;
//! `--generate-assets DIR` alone writes the manual page and completions a package installs
//! (`ringcrypt::assets`).

use std::process::ExitCode;

use clap::FromArgMatches;
use ringcrypt::daemon::{self, Args, Config, check, logging};

fn main() -> ExitCode {
    if let Some(dir) = ringcrypt::assets::requested() {
        return ringcrypt::assets::generate(ringcrypt::assets::daemon_command(), &dir);
    }
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let matches = match ringcrypt::assets::daemon_command().try_get_matches_from(&argv) {
        Ok(matches) => matches,
        // A configuration check reports a bad flag as it reports any other problem.
        Err(err) if err.use_stderr() && argv.iter().any(|a| a == "--check-config") => {
            let _ = err.print();
            eprintln!("ringcryptd: configuration check failed: bad command line");
            return ExitCode::FAILURE;
        }
        Err(err) => err.exit(),
    };
    if ringcrypt::assets::daemon_completions(&matches) {
        return ExitCode::SUCCESS;
    }
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|err| err.exit());
    if args.check_config {
        return check::main(args);
    }
    match Config::from_args(args).and_then(daemon::run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            logging::fatal(&err);
            ExitCode::FAILURE
        }
    }
}
