//! A command through the daemon: the request a command line makes (paths made absolute
//! against our working directory, options only the offline mode has refused), the round trip
//! on the socket ([`crate::client`]), and a single file's input and output opened here and
//! passed as descriptors, then linked into place.
//!
//! What this room does not do: a `-r` tree (`tree` sends its own recursive request, with the
//! helpers here), print the outcome (`print`), or work without the daemon (`offline`).

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use super::args::{Cli, Command};
use super::print::{self, Shown};
use super::{Failure, decrypt_output, files_failed, usage};
use crate::client::conn::{self as client, Client};
use crate::error::{Code, Error};
use crate::offline::output::{AtomicFile, Durability};
use crate::protocol::Format;
use crate::protocol::{FileJobSpec, FileOp, JobEntry, ReplyLine, Request};
use crate::tree_rules::with_suffix;

/// Runs a command through the daemon: builds the request, sends it, prints the outcome.
pub(super) fn run(cli: Cli) -> Result<(), Failure> {
    let (mut request, shown) = request_for(&cli.command)?;
    let mut client = Client::connect(&cli.socket)?;
    let mut passing = match &mut request {
        Request::File(spec) if !spec.recursive => PassedFiles::open(spec)?,
        _ => None,
    };
    let json = cli.json;
    let print_json = |line: &str, _reply: &ReplyLine| {
        if json {
            print::raw_line(line);
        }
    };
    let reply = match &mut passing {
        Some(files) => {
            let output = files.output.file();
            let fds = [files.input.as_fd(), output.as_fd()];
            client.request_passing(&request, &fds, print_json)?
        }
        None => client.request(&request, print_json)?,
    };
    if let (Some(files), Request::File(spec)) = (passing, &request) {
        files.commit(spec)?;
    }
    if !json {
        print::reply(&request, shown.as_ref(), client.socket(), &reply)?;
    }
    if let ReplyLine::Done(done) = &reply
        && done.files_failed > 0
    {
        return Err(files_failed(done.files_failed, Some(&done.job.to_string())));
    }
    if let ReplyLine::Status(entry) = &reply
        && entry.state == "failed"
    {
        return Err(job_failed(entry));
    }
    Ok(())
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
struct PassedFiles {
    input: std::fs::File,
    output: AtomicFile,
    mode: u32,
    mtime: Option<std::time::SystemTime>,
}

impl PassedFiles {
    /// Opens both files and marks `spec` as passing descriptors; None when the output's file
    /// system has no `O_TMPFILE`, so the request goes by path.
    fn open(spec: &mut FileJobSpec) -> Result<Option<PassedFiles>, Failure> {
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
    fn commit(mut self, spec: &FileJobSpec) -> Result<(), Failure> {
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

/// The request for a daemon command; for file jobs, also the paths to show.
fn request_for(command: &Command) -> Result<(Request, Option<Shown>), Failure> {
    let (op, input, output, key, overwrite) = match command {
        Command::Keygen { .. } | Command::Completions { .. } => {
            unreachable!("keygen and completions need no daemon and are run offline")
        }
        Command::Ping => return Ok((Request::Ping, None)),
        Command::Status { job } => return Ok((Request::Status { job: *job }, None)),
        Command::Cancel { job } => return Ok((Request::Cancel { job: *job }, None)),
        Command::Jobs => return Ok((Request::Jobs, None)),
        Command::Stats => return Ok((Request::Stats, None)),
        Command::Keys => return Ok((Request::Keys, None)),
        Command::Reload => return Ok((Request::Reload, None)),
        Command::Encrypt {
            input,
            output,
            key,
            format,
            chunk_log2,
            force,
            tree: _,
        } => {
            daemon_settings(format.format(), *chunk_log2)?;
            let output = output.clone().unwrap_or_else(|| with_suffix(input));
            (FileOp::Encrypt, input.clone(), output, key, *force)
        }
        Command::Decrypt {
            input,
            output,
            key,
            force,
            tree: _,
        } => {
            let output = decrypt_output(input, output.as_deref())?;
            (FileOp::Decrypt, input.clone(), output, key, *force)
        }
        Command::Rewrap {
            input,
            output,
            in_place,
            key,
            chunk_log2,
            force,
            tree: _,
        } => {
            daemon_settings(Format::Ringcrypt, *chunk_log2)?;
            match output {
                Some(output) => (FileOp::Rewrap, input.clone(), output.clone(), key, *force),
                None => {
                    debug_assert!(*in_place, "clap requires -o or --in-place");
                    (FileOp::Rewrap, input.clone(), input.clone(), key, true)
                }
            }
        }
    };
    let cwd = current_dir()?;
    let abs_input = wire_path(&cwd, &input)?;
    let abs_output = wire_path(&cwd, &output)?;
    if op == FileOp::Rewrap && !overwrite_in_place(command) && abs_input == abs_output {
        return Err(usage(
            format!("{} is the input itself", output.display()),
            "use --in-place to replace the input",
        ));
    }
    let mut spec = FileJobSpec::new(op, abs_input, abs_output);
    spec.key = key.clone();
    spec.overwrite = overwrite;
    Ok((
        Request::File(spec),
        Some(Shown {
            verb: print::verb(op),
            input,
            output,
        }),
    ))
}

fn overwrite_in_place(command: &Command) -> bool {
    matches!(command, Command::Rewrap { in_place: true, .. })
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
