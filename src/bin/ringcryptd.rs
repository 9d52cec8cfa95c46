//! The `ringcryptd` daemon. Everything lives in `ringcrypt::daemon`; this only runs it and
//! maps failure to an exit code (1: could not start or failed; 2: usage, from clap).
//! `--completions SHELL` prints a completion script; `--generate-assets DIR` alone writes
//! the manual page and completions a package installs (`ringcrypt::assets`).

use clap::FromArgMatches;

fn main() -> std::process::ExitCode {
    if let Some(dir) = ringcrypt::assets::requested() {
        return ringcrypt::assets::generate(ringcrypt::assets::daemon_command(), &dir);
    }
    let matches = ringcrypt::assets::daemon_command().get_matches();
    if ringcrypt::assets::daemon_completions(&matches) {
        return std::process::ExitCode::SUCCESS;
    }
    let args = ringcrypt::daemon::Args::from_arg_matches(&matches).unwrap_or_else(|err| err.exit());
    match ringcrypt::daemon::Config::from_args(args).and_then(ringcrypt::daemon::run) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ringcryptd: error: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
