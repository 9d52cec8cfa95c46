//! The `ringcryptd` daemon. Everything lives in `ringcrypt::daemon`; this only runs it and
//! maps failure to an exit code (1: could not start or failed; 2: usage, from clap; with
//! `--check-config`, every problem is 1).

use std::process::ExitCode;

use clap::Parser;
use ringcrypt::daemon::{self, Args, Config, check, logging};

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let args = match Args::try_parse_from(&argv) {
        Ok(args) => args,
        // A configuration check reports a bad flag as it reports any other problem.
        Err(err) if err.use_stderr() && argv.iter().any(|a| a == "--check-config") => {
            let _ = err.print();
            eprintln!("ringcryptd: configuration check failed: bad command line");
            return ExitCode::FAILURE;
        }
        Err(err) => err.exit(),
    };
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
