//! The files a package installs beside the binaries that come from their clap definitions:
//! manual pages (`clap_mangen`) and shell completion scripts (`clap_complete`). Each binary
//! writes its own when run as `BINARY --generate-assets DIR` (and nothing else on the command
//! line), so they always match the binary that ships; `contrib/build-deb.sh` runs both before
//! `cargo deb`. That option is read before clap parses anything, so it appears in no help,
//! manual page or completion script.
//!
//! Layout under DIR: `man/NAME.1` (and `man/NAME-SUB.1` for each subcommand),
//! `completions/NAME.bash`, `completions/_NAME` (zsh), `completions/NAME.fish`.
//!
//! It also gives `ringcryptd` the option that lives outside its configuration
//! ([`daemon_command`]): `--completions SHELL`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Arg, ArgMatches, CommandFactory, value_parser};
use clap_complete::Shell;

use crate::error::{Code, Error};

/// The shells completion scripts are written for, with each one's file name for `name`.
const SHELLS: [(Shell, &str); 3] = [
    (Shell::Bash, "{}.bash"),
    (Shell::Zsh, "_{}"),
    (Shell::Fish, "{}.fish"),
];

/// Writes the manual pages and completion scripts of `cmd` under `dir`; returns the files
/// written.
pub fn write(cmd: clap::Command, dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let name = cmd.get_name().to_string();
    let man = dir.join("man");
    let completions = dir.join("completions");
    for sub in [&man, &completions] {
        std::fs::create_dir_all(sub).map_err(|e| Error::io("create", sub, e))?;
    }
    clap_mangen::generate_to(cmd.clone(), &man).map_err(|e| Error::io("write", &man, e))?;
    let mut written = Vec::new();
    let entries = std::fs::read_dir(&man).map_err(|e| Error::io("list", &man, e))?;
    for entry in entries.flatten() {
        let file = entry.file_name();
        let file = file.to_string_lossy();
        if file == format!("{name}.1") || file.starts_with(&format!("{name}-")) {
            written.push(entry.path());
        }
    }
    for (shell, pattern) in SHELLS {
        let path = completions.join(pattern.replace("{}", &name));
        let mut file = std::fs::File::create(&path).map_err(|e| Error::io("create", &path, e))?;
        clap_complete::generate(shell, &mut cmd.clone(), &name, &mut file);
        written.push(path);
    }
    written.sort();
    Ok(written)
}

/// `DIR` when the process was started as `BINARY --generate-assets DIR`.
pub fn requested() -> Option<PathBuf> {
    let mut args = std::env::args_os().skip(1);
    let (flag, dir) = (args.next()?, args.next()?);
    (flag == "--generate-assets" && args.next().is_none()).then(|| PathBuf::from(dir))
}

/// Writes `cmd`'s assets under `dir`, names them on stdout, and says how that went.
pub fn generate(cmd: clap::Command, dir: &Path) -> ExitCode {
    let name = cmd.get_name().to_string();
    match write(cmd, dir).and_then(|written| report(&written)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{name}: error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `ringcryptd`'s whole command line: its configuration ([`crate::daemon::Args`]) plus
/// `--completions SHELL`.
pub fn daemon_command() -> clap::Command {
    crate::daemon::Args::command().arg(
        Arg::new("completions")
            .long("completions")
            .value_name("SHELL")
            .value_parser(value_parser!(Shell))
            .exclusive(true)
            .help(
                "Print a shell completion script to stdout and exit, e.g. \
                 `ringcryptd --completions bash > /etc/bash_completion.d/ringcryptd`",
            ),
    )
}

/// Prints the completion script if `matches` asks for one; whether it did.
pub fn daemon_completions(matches: &ArgMatches) -> bool {
    let Some(shell) = matches.get_one::<Shell>("completions") else {
        return false;
    };
    let mut stdout = std::io::stdout().lock();
    clap_complete::generate(*shell, &mut daemon_command(), "ringcryptd", &mut stdout);
    true
}

/// Names each file written, one per line, on stdout.
fn report(written: &[PathBuf]) -> Result<(), Error> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    for path in written {
        writeln!(stdout, "{}", path.display())
            .map_err(|e| Error::new(Code::IoError, format!("cannot write to stdout: {e}")))?;
    }
    Ok(())
}
