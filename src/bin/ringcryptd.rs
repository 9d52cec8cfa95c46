//! The `ringcryptd` daemon. Everything lives in `ringcrypt::daemon`; this only runs it and
//! maps failure to an exit code (1: could not start or failed; 2: usage, from clap).

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = ringcrypt::daemon::Args::parse();
    let result = ringcrypt::daemon::Config::from_args(args).and_then(ringcrypt::daemon::run);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ringcryptd: error: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
