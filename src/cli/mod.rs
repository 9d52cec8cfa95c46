//! The `ringcrypt` command line: parse arguments, run, map the outcome to the exit codes of
//! README "Using it" (0 success, 1 the job failed, 2 usage error, 3 the daemon could not be reached).
//!
//! Without `--keys`, file jobs and the daemon's own commands go to `ringcryptd` over its socket
//! (the connection lives in [`crate::client`]); with `--keys`, file jobs run in this process
//! ([`crate::offline`]). Errors print as `error: ...`, followed by `hint: ...` where a next step
//! is clear. With `--json`, every reply line from the daemon goes to stdout as received, and
//! nothing else does.
//!
//! With `-r`, a file job is a directory tree: offline it runs in [`crate::tree`], through the
//! daemon it is one recursive request whose `progress` lines drive the same display. Either
//! way the outcome is one [`tree::Summary`], printed the same way.

use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::client::{self, Client, ClientError};
use crate::daemon::DEFAULT_SOCKET;
use crate::error::{Code, Error};
use crate::keys::{self, KeyRing};
use crate::limits::{CHUNK_LOG2_DEFAULT, CHUNK_LOG2_MAX, CHUNK_LOG2_MIN};
use crate::offline::{self, Format, Job, Outcome};
use crate::output::{AtomicFile, Durability};
use crate::protocol::{Done, FileJobSpec, FileOp, JobId, KeyList, Progress, ReplyLine, Request};
use crate::tree::{self, Summary, TreeJob};
use crate::tree_rules::{with_suffix, without_suffix};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Exit code: the job failed; the message says why.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: the command line was wrong.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the daemon could not be reached.
pub const EXIT_UNREACHABLE: u8 = 3;

/// The hint printed when the daemon cannot be reached.
const UNREACHABLE_HINT: &str = "start it with `ringcryptd --dev`, or set RINGCRYPT_SOCKET / \
     --socket to where it listens (or pass --keys FILE to work without a daemon)";

/// How often the plain (not a terminal) progress line is printed, at most.
const PLAIN_PROGRESS_INTERVAL: Duration = Duration::from_secs(2);

const AFTER_HELP: &str = "\
Examples:
  ringcrypt encrypt report.pdf                             # via ringcryptd: report.pdf.rcrypt
  ringcrypt encrypt -r photos                              # a directory tree -> photos.rcrypt/
  ringcrypt --socket ./ringcrypt-dev/ringcrypt.sock ping
  ringcrypt --json decrypt report.pdf.rcrypt -o copy.pdf   # the daemon's reply lines, as JSON
  ringcrypt keygen --name prod-2026 >> keys.toml && chmod 600 keys.toml
  ringcrypt --keys keys.toml encrypt report.pdf            # offline: no daemon
  ringcrypt --keys keys.toml decrypt report.pdf.rcrypt -o copy.pdf
  ringcrypt --keys keys.toml rewrap old.rcrypt --in-place  # re-encrypt under the default key
  ringcrypt --keys keys.toml decrypt -r photos.rcrypt      # offline, all cores -> photos/
  ringcrypt completions bash > ~/.local/share/bash-completion/completions/ringcrypt

Through the daemon, a single file goes as open descriptors: this process opens the input and
creates the output's temp file, so your own permissions apply, no allowed root is needed, and
the output is yours. A tree (-r) goes by path and must lie under one of the daemon's
--allow-root directories.

Exit codes: 0 success, 1 the job failed, 2 usage error, 3 the daemon could not be reached.";

/// Authenticated file encryption (AES-256-CBC + HMAC-SHA256, RCRYPT v1).
#[derive(Parser, Debug)]
#[command(name = "ringcrypt", version, after_help = AFTER_HELP, max_term_width = 100)]
pub struct Cli {
    /// Key ring (TOML, mode 0600): do the work in this process with these keys.
    /// Without it, file jobs go to the daemon.
    #[arg(long, global = true, value_name = "FILE", env = "RINGCRYPT_KEYS")]
    keys: Option<PathBuf>,

    /// The daemon's socket.
    #[arg(long, global = true, value_name = "PATH", env = "RINGCRYPT_SOCKET",
          default_value = DEFAULT_SOCKET)]
    socket: PathBuf,

    /// Print the daemon's reply lines (JSON, one per line) to stdout as they arrive, and
    /// nothing else.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a new [[key]] entry with a fresh random secret, ready to append to a key ring.
    #[command(after_help = "\
Examples:
  ringcrypt keygen > keys.toml && chmod 600 keys.toml      # a ring with one key
  ringcrypt keygen --name prod-2027 >> keys.toml           # add a key for rotation

A ring with one active key uses it by default; with several, set `default = \"NAME\"` at the top.")]
    Keygen {
        /// Name of the key (default: key-YYYYMMDD-<random>).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
    },

    /// Encrypt a file or, with -r, a directory tree (default output: IN.rcrypt).
    #[command(after_help = "\
Examples:
  ringcrypt encrypt data.csv                                    # via the daemon -> data.csv.rcrypt
  ringcrypt encrypt data.csv -o /backup/d.rcrypt --key prod-2026 --force
  ringcrypt --keys keys.toml encrypt data.csv                   # offline
  ringcrypt --keys keys.toml encrypt old.tar --format openssl --key legacy
  ringcrypt encrypt -r photos                                   # tree -> photos.rcrypt/
  ringcrypt --keys keys.toml encrypt -r photos -o /backup/photos --skip-existing

The output appears only when complete and on disk; an existing output is never replaced
without --force. With -r, every file FILE becomes OUT/FILE.rcrypt (OUT defaults to the
sibling directory IN.rcrypt); the summary lists failed and skipped entries, and the exit
code is 1 if any file failed.")]
    Encrypt {
        /// The file (or, with -r, the directory) to encrypt.
        input: PathBuf,
        /// Where to write (default: IN.rcrypt; with -r, a directory).
        #[arg(short, long, value_name = "OUT")]
        output: Option<PathBuf>,
        /// Key to encrypt with (default: the key ring's default).
        #[arg(long, value_name = "NAME")]
        key: Option<String>,
        /// Output format. `openssl` is what `openssl enc -aes-256-cbc -pbkdf2` writes; it is
        /// NOT authenticated, so use it only for tools that need it (offline only).
        #[arg(long, value_enum, default_value_t = FormatArg::Ringcrypt)]
        format: FormatArg,
        /// Chunk size as a power of two, 12 (4 KiB) to 24 (16 MiB) [default: 16]; offline
        /// only (the daemon uses its own).
        #[arg(long, value_name = "N",
              value_parser = clap::value_parser!(u8).range(CHUNK_LOG2_MIN as i64..=CHUNK_LOG2_MAX as i64))]
        chunk_log2: Option<u8>,
        /// Replace OUT atomically if it exists (with -r: every existing output file).
        #[arg(short, long)]
        force: bool,
        #[command(flatten)]
        tree: TreeArgs,
    },

    /// Decrypt a file or, with -r, a directory tree (ringcrypt or openssl format, detected;
    /// default output: IN without .rcrypt).
    #[command(after_help = "\
Examples:
  ringcrypt decrypt data.csv.rcrypt                             # via the daemon -> data.csv
  ringcrypt --keys keys.toml decrypt data.csv.rcrypt            # offline
  ringcrypt --keys keys.toml decrypt legacy.enc -o legacy.tar --key legacy
  ringcrypt decrypt -r photos.rcrypt                            # tree -> photos/
  ringcrypt --keys keys.toml decrypt -r /backup/photos -o photos --skip-existing

A ringcrypt file names its key; every chunk is verified before any plaintext is written, and
a file that fails verification leaves nothing behind. With -r, every FILE.rcrypt becomes
OUT/FILE; other files are skipped (\"not a .rcrypt file\"). Without -o, IN must end in
.rcrypt (the output is IN without it); no other name is guessed.")]
    Decrypt {
        /// The file (or, with -r, the directory) to decrypt.
        input: PathBuf,
        /// Where to write (default: IN without its .rcrypt suffix; with -r, a directory).
        #[arg(short, long, value_name = "OUT")]
        output: Option<PathBuf>,
        /// Passphrase entry for openssl-format files (ringcrypt files name their own key).
        #[arg(long, value_name = "NAME")]
        key: Option<String>,
        /// Replace OUT atomically if it exists (with -r: every existing output file).
        #[arg(short, long)]
        force: bool,
        #[command(flatten)]
        tree: TreeArgs,
    },

    /// Re-encrypt a file or, with -r, a directory tree under the key ring's default key, with
    /// no plaintext on disk.
    #[command(after_help = "\
Examples:
  ringcrypt rewrap a.rcrypt --in-place                          # via the daemon
  ringcrypt --keys keys.toml rewrap a.rcrypt -o a.new.rcrypt
  ringcrypt --keys keys.toml rewrap a.rcrypt --in-place         # after making a new key default
  ringcrypt --keys keys.toml rewrap legacy.enc -o legacy.rcrypt --key legacy   # migrate
  ringcrypt rewrap -r /backup/photos --in-place                 # a whole tree, file by file
  ringcrypt --keys keys.toml rewrap -r old-archive -o new-archive --skip-existing

The source may be a ringcrypt or openssl-format file; the result is always ringcrypt. With
-r, file names are kept and either -o OUTDIR or --in-place is required (no default).")]
    Rewrap {
        /// The encrypted file (or, with -r, the directory).
        input: PathBuf,
        /// Where to write the re-encrypted file.
        #[arg(short, long, value_name = "OUT", required_unless_present = "in_place")]
        output: Option<PathBuf>,
        /// Replace IN itself, atomically, once the new file is complete.
        #[arg(long, conflicts_with = "output")]
        in_place: bool,
        /// Passphrase entry for an openssl-format source.
        #[arg(long, value_name = "NAME")]
        key: Option<String>,
        /// Chunk size of the new file as a power of two, 12 to 24 [default: 16]; offline only.
        #[arg(long, value_name = "N",
              value_parser = clap::value_parser!(u8).range(CHUNK_LOG2_MIN as i64..=CHUNK_LOG2_MAX as i64))]
        chunk_log2: Option<u8>,
        /// Replace OUT atomically if it exists (with -r: every existing output file).
        #[arg(short, long)]
        force: bool,
        #[command(flatten)]
        tree: TreeArgs,
    },

    /// Check that the daemon answers; print its version, shards and IO backend.
    #[command(after_help = "\
Examples:
  ringcrypt ping
  ringcrypt --socket ./ringcrypt-dev/ringcrypt.sock ping

Exit code 3 means the daemon could not be reached at the socket.")]
    Ping,

    /// Show a job's state and progress.
    #[command(after_help = "\
Examples:
  ringcrypt status 1-42                # the job id that `jobs` or `--json` showed
  ringcrypt --json status 1-42")]
    Status {
        /// The job id, as `<shard>-<seq>` (e.g. 1-42).
        #[arg(value_parser = parse_job)]
        job: JobId,
    },

    /// Cancel a queued or running job; its output is never created.
    #[command(after_help = "\
Examples:
  ringcrypt cancel 1-42

Exit code 1 if the daemon has no such job.")]
    Cancel {
        /// The job id, as `<shard>-<seq>` (e.g. 1-42).
        #[arg(value_parser = parse_job)]
        job: JobId,
    },

    /// List the daemon's jobs (queued, running and recently finished).
    #[command(after_help = "\
Examples:
  ringcrypt jobs
  ringcrypt --json jobs | jq -r '.jobs[] | select(.state == \"running\") | .job'")]
    Jobs,

    /// Per-shard counters: queued and running jobs, jobs done, bytes in and out.
    #[command(after_help = "\
Examples:
  ringcrypt stats
  ringcrypt --json stats")]
    Stats,

    /// The daemon's keys: name, id, kind and state (never key bytes).
    #[command(after_help = "\
Examples:
  ringcrypt keys
  ringcrypt --json keys | jq -r .default")]
    Keys,

    /// Make the daemon reload its key ring (admin only; same as SIGHUP).
    #[command(after_help = "\
Examples:
  ringcrypt keygen --name prod-2027 >> /etc/ringcrypt/keys.toml && ringcrypt reload")]
    Reload,

    /// Print a shell completion script to stdout.
    #[command(after_help = "\
Examples:
  ringcrypt completions bash > ~/.local/share/bash-completion/completions/ringcrypt
  ringcrypt completions zsh > \"${fpath[1]}/_ringcrypt\"
  ringcrypt completions fish > ~/.config/fish/completions/ringcrypt.fish")]
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// The directory-tree options shared by encrypt, decrypt and rewrap.
#[derive(Args, Debug, Clone, Copy)]
struct TreeArgs {
    /// IN is a directory: process every regular file under it into the same relative path
    /// under the output directory (created if missing). Directories keep their mode bits,
    /// files their mode bits and mtime; symlinks are never followed, and symlinks, FIFOs,
    /// sockets and devices are skipped. One bad file never stops the tree.
    #[arg(short, long)]
    recursive: bool,
    /// With -r: leave outputs that already exist and verify (ringcrypt outputs: they open
    /// with this key ring; decrypt outputs: they exist) and replace those that do not. For
    /// resuming an interrupted tree.
    #[arg(long, requires = "recursive", conflicts_with = "force")]
    skip_existing: bool,
    /// No progress display (the summary is still printed).
    #[arg(short, long)]
    quiet: bool,
}

fn parse_job(text: &str) -> Result<JobId, String> {
    text.parse().map_err(|err: Error| err.message)
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FormatArg {
    /// RCRYPT v1, authenticated (the default).
    Ringcrypt,
    /// `openssl enc -aes-256-cbc -pbkdf2` compatible; NOT authenticated.
    Openssl,
}

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

/// Runs the client with the process's arguments.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "error: {}", failure.error);
            if let Some(hint) = failure.hint {
                let _ = writeln!(stderr, "hint: {hint}");
            }
            ExitCode::from(failure.exit)
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    if let Some(plan) = TreePlan::from_command(&cli.command)? {
        return match cli.keys.is_some() {
            true => run_tree_offline(&cli, &plan),
            false => run_tree_daemon(&cli, &plan),
        };
    }
    let file_job = matches!(
        cli.command,
        Command::Encrypt { .. } | Command::Decrypt { .. } | Command::Rewrap { .. }
    );
    if file_job && cli.keys.is_none() {
        return run_daemon(cli);
    }
    match &cli.command {
        Command::Keygen { name } => keygen(name.as_deref()),
        Command::Completions { shell } => {
            let mut stdout = std::io::stdout().lock();
            clap_complete::generate(*shell, &mut Cli::command(), "ringcrypt", &mut stdout);
            Ok(())
        }
        Command::Encrypt {
            input,
            output,
            key,
            format,
            chunk_log2,
            force,
            tree: _,
        } => {
            no_json(&cli)?;
            let ring = load_ring(cli.keys.as_deref())?;
            let output = output.clone().unwrap_or_else(|| with_suffix(input));
            let format = match format {
                FormatArg::Ringcrypt => Format::Ringcrypt,
                FormatArg::Openssl => Format::Openssl,
            };
            if format == Format::Openssl {
                eprintln!(
                    "warning: the openssl format is NOT authenticated: anyone who can modify {} \
                     can change what it decrypts to, undetected. Prefer the default ringcrypt format.",
                    output.display()
                );
            }
            let job = Job {
                input,
                output: &output,
                key: key.as_deref(),
                format,
                chunk_log2: chunk_log2.unwrap_or(CHUNK_LOG2_DEFAULT),
                overwrite: *force,
                durability: Durability::Fsync,
            };
            let outcome = offline::encrypt(&ring, &job)?;
            report("encrypted", &job, &outcome);
            Ok(())
        }
        Command::Decrypt {
            input,
            output,
            key,
            force,
            tree: _,
        } => {
            no_json(&cli)?;
            let output = decrypt_output(input, output.as_deref())?;
            let ring = load_ring(cli.keys.as_deref())?;
            let job = Job {
                input,
                output: &output,
                key: key.as_deref(),
                format: Format::Ringcrypt,
                chunk_log2: CHUNK_LOG2_DEFAULT,
                overwrite: *force,
                durability: Durability::Fsync,
            };
            let outcome = offline::decrypt(&ring, &job)?;
            report("decrypted", &job, &outcome);
            Ok(())
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
            no_json(&cli)?;
            let ring = load_ring(cli.keys.as_deref())?;
            let (input, output, overwrite) = match output {
                Some(output) => {
                    if same_path(input, output) {
                        return Err(Error::new(
                            Code::BadRequest,
                            format!(
                                "{} is the input itself; use --in-place to replace the input",
                                output.display()
                            ),
                        )
                        .into());
                    }
                    (input.clone(), output.clone(), *force)
                }
                None => {
                    debug_assert!(*in_place, "clap requires -o or --in-place");
                    // Replace the file a symlink points to, not the link itself.
                    let target =
                        std::fs::canonicalize(input).map_err(|e| Error::io("resolve", input, e))?;
                    (target.clone(), target, true)
                }
            };
            let job = Job {
                input: &input,
                output: &output,
                key: key.as_deref(),
                format: Format::Ringcrypt,
                chunk_log2: chunk_log2.unwrap_or(CHUNK_LOG2_DEFAULT),
                overwrite,
                durability: Durability::Fsync,
            };
            let outcome = offline::rewrap(&ring, &job)?;
            report("rewrapped", &job, &outcome);
            Ok(())
        }
        Command::Ping
        | Command::Status { .. }
        | Command::Cancel { .. }
        | Command::Jobs
        | Command::Stats
        | Command::Keys
        | Command::Reload => run_daemon(cli),
    }
}

/// `--json` prints the daemon's replies; offline jobs have none.
fn no_json(cli: &Cli) -> Result<(), Failure> {
    if cli.json {
        return Err(usage(
            "--json prints the daemon's replies, and --keys works without the daemon",
            "leave out --keys (and RINGCRYPT_KEYS) to send the job to ringcryptd",
        ));
    }
    Ok(())
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

/// Refuses an option that only the offline mode has.
fn offline_only(given: bool, what: &str) -> Result<(), Failure> {
    if given {
        return Err(usage(
            format!("{what} works only offline; the daemon uses its own settings"),
            "pass --keys FILE to do this job in this process",
        ));
    }
    Ok(())
}

/// Runs a command through the daemon: builds the request, sends it, prints the outcome.
fn run_daemon(cli: Cli) -> Result<(), Failure> {
    let (mut request, shown) = daemon_request(&cli.command)?;
    let mut client = Client::connect(&cli.socket)?;
    let mut passing = match &mut request {
        Request::File(spec) if !spec.recursive => PassedFiles::open(spec)?,
        _ => None,
    };
    let json = cli.json;
    let print_json = |line: &str, _reply: &ReplyLine| {
        if json {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout
                .write_all(line.as_bytes())
                .and_then(|()| stdout.flush());
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
        print_reply(&request, shown.as_ref(), client.socket(), &reply)?;
    }
    if let ReplyLine::Done(done) = &reply
        && done.files_failed > 0
    {
        return Err(Failure {
            exit: EXIT_FAILED,
            error: format!("{} file(s) of job {} failed", done.files_failed, done.job),
            hint: None,
        });
    }
    Ok(())
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

/// A file job's paths as the user named them, for the summary line.
struct Shown {
    verb: &'static str,
    input: PathBuf,
    output: PathBuf,
}

/// The request for a daemon command; for file jobs, also the paths to show.
fn daemon_request(command: &Command) -> Result<(Request, Option<Shown>), Failure> {
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
            if matches!(format, FormatArg::Openssl) {
                return Err(usage(
                    "the daemon seals the ringcrypt format only",
                    "pass --keys FILE to write the openssl format in this process",
                ));
            }
            offline_only(chunk_log2.is_some(), "--chunk-log2")?;
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
            offline_only(chunk_log2.is_some(), "--chunk-log2")?;
            match output {
                Some(output) => (FileOp::Rewrap, input.clone(), output.clone(), key, *force),
                None => {
                    debug_assert!(*in_place, "clap requires -o or --in-place");
                    (FileOp::Rewrap, input.clone(), input.clone(), key, true)
                }
            }
        }
    };
    let cwd = std::env::current_dir().map_err(|e| {
        Failure::from(Error::new(
            Code::IoError,
            format!("cannot find the current directory: {e}"),
        ))
    })?;
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
    let verb = match op {
        FileOp::Encrypt => "encrypted",
        FileOp::Decrypt => "decrypted",
        FileOp::Rewrap => "rewrapped",
    };
    Ok((
        Request::File(spec),
        Some(Shown {
            verb,
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
fn wire_path(cwd: &Path, path: &Path) -> Result<PathBuf, Failure> {
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

/// Prints the human form of a final reply. A reply this client cannot show for the request
/// (a type a newer daemon added) is an error rather than a blank.
fn print_reply(
    request: &Request,
    shown: Option<&Shown>,
    socket: &Path,
    reply: &ReplyLine,
) -> Result<(), Failure> {
    let out = match reply {
        ReplyLine::Done(done) => match shown {
            Some(shown) => format!(
                "{} {} -> {} ({} bytes -> {} bytes, job {})\n",
                shown.verb,
                shown.input.display(),
                shown.output.display(),
                done.bytes_in,
                done.bytes_out,
                done.job,
            ),
            None => String::new(),
        },
        ReplyLine::Pong(pong) => format!(
            "ringcryptd {} at {}: {} shards, {} backend\n",
            pong.version,
            socket.display(),
            pong.shards,
            pong.backend,
        ),
        ReplyLine::Status(job) => format!(
            "job {}: {}, {}\n  {} {} -> {}\n",
            job.job,
            job.state,
            progress_text(job.progress.bytes_done, job.progress.bytes_total),
            job.op,
            job.input.display(),
            job.output.display(),
        ),
        ReplyLine::Cancelled { job } => format!("cancelled job {job}\n"),
        ReplyLine::Jobs(jobs) => {
            let mut rows = vec![[
                "JOB".to_string(),
                "STATE".into(),
                "OP".into(),
                "PROGRESS".into(),
                "INPUT -> OUTPUT".into(),
            ]];
            for job in jobs {
                rows.push([
                    job.job.to_string(),
                    job.state.clone(),
                    job.op.clone(),
                    progress_text(job.progress.bytes_done, job.progress.bytes_total),
                    format!("{} -> {}", job.input.display(), job.output.display()),
                ]);
            }
            if rows.len() == 1 {
                "no jobs\n".into()
            } else {
                table(&rows)
            }
        }
        ReplyLine::Stats(shards) => {
            let mut rows = vec![[
                "SHARD".to_string(),
                "QUEUED".into(),
                "RUNNING".into(),
                "JOBS_DONE".into(),
                "BYTES_IN".into(),
                "BYTES_OUT".into(),
            ]];
            for s in shards {
                rows.push([
                    s.shard.to_string(),
                    s.queued.to_string(),
                    s.running.to_string(),
                    s.jobs_done.to_string(),
                    s.bytes_in.to_string(),
                    s.bytes_out.to_string(),
                ]);
            }
            table(&rows)
        }
        ReplyLine::Keys(keys) => keys_table(keys),
        ReplyLine::Reloaded { keys } => format!("reloaded: {keys} keys\n"),
        ReplyLine::Accepted { .. }
        | ReplyLine::Progress(_)
        | ReplyLine::Error(_)
        | ReplyLine::Other { .. } => return Err(unexpected_reply(request, reply)),
    };
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush());
    Ok(())
}

/// The `keys` table: the default key marked, `-` for a passphrase's id.
fn keys_table(list: &KeyList) -> String {
    let mut rows = vec![[
        "NAME".to_string(),
        "ID".into(),
        "KIND".into(),
        "STATE".into(),
    ]];
    for key in &list.keys {
        let mut name = key.name.clone();
        if list.default.as_deref() == Some(name.as_str()) {
            name.push_str(" (default)");
        }
        rows.push([
            name,
            key.id.clone().unwrap_or_else(|| "-".into()),
            key.kind.clone(),
            key.state.clone(),
        ]);
    }
    table(&rows)
}

/// A final reply of a type the request does not call for: `internal`.
fn unexpected_reply(request: &Request, reply: &ReplyLine) -> Failure {
    Failure::from(Error::new(
        Code::Internal,
        format!(
            "the daemon answered the {} request with a {:?} reply, which this client cannot \
             show (is ringcryptd newer than ringcrypt?)",
            request.op(),
            reply.kind()
        ),
    ))
}

fn progress_text(done: u64, total: u64) -> String {
    if total == 0 {
        format!("{done}/{total} bytes")
    } else {
        // u128: done * 100 cannot overflow.
        let percent = u128::from(done.min(total)) * 100 / u128::from(total);
        format!("{done}/{total} bytes ({percent}%)")
    }
}

/// Left-aligned columns, two spaces apart; the last column is not padded.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                out.push_str(cell);
            } else {
                out.push_str(cell);
                let pad = widths[i] - cell.chars().count() + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    }
    out
}

fn keygen(name: Option<&str>) -> Result<(), Failure> {
    let name = match name {
        Some(name) => name.to_string(),
        None => {
            let mut tag = [0u8; 3];
            getrandom::fill(&mut tag).map_err(|e| Error::new(Code::Internal, e.to_string()))?;
            format!("key-{}-{}", today(), keys::hex_encode(&tag))
        }
    };
    // Parse the entry back, so a name that TOML cannot carry fails here, not at load time.
    let entry = keys::keygen_entry(&name)?;
    KeyRing::parse(&entry, "the new entry")?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(entry.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| {
            Error::new(
                Code::IoError,
                format!("cannot write to standard output: {e}"),
            )
        })?;
    Ok(())
}

/// Today's date as YYYYMMDD (UTC), from the system clock.
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Civil-from-days (H. Hinnant's algorithm), valid for every date after 1970.
    let days = (secs / 86_400) as i64 + 719_468;
    let era = days / 146_097;
    let doe = days - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}")
}

fn load_ring(path: Option<&Path>) -> Result<KeyRing, Failure> {
    let path = path.ok_or_else(|| {
        usage(
            "no key ring: this command needs --keys FILE (or RINGCRYPT_KEYS)",
            "make one with `ringcrypt keygen > keys.toml && chmod 600 keys.toml`",
        )
    })?;
    Ok(KeyRing::load(path)?)
}

fn same_path(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn report(verb: &str, job: &Job, outcome: &Outcome) {
    println!(
        "{verb} {} -> {} ({} bytes -> {} bytes, {} format, key {:?})",
        job.input.display(),
        job.output.display(),
        outcome.bytes_in,
        outcome.bytes_out,
        outcome.format.as_str(),
        outcome.key
    );
}

/// A `-r` file job, from the command line: what to do to which trees.
#[derive(Debug)]
struct TreePlan {
    op: FileOp,
    /// The input as the user named it, trailing `/` and `.` components dropped.
    input: PathBuf,
    output: PathBuf,
    key: Option<String>,
    format: Format,
    chunk_log2: Option<u8>,
    overwrite: bool,
    skip_existing: bool,
    quiet: bool,
}

impl TreePlan {
    /// The plan when the command is a file job with `-r`; `None` otherwise.
    fn from_command(command: &Command) -> Result<Option<TreePlan>, Failure> {
        let tree = match command {
            Command::Encrypt { tree, .. }
            | Command::Decrypt { tree, .. }
            | Command::Rewrap { tree, .. } => *tree,
            _ => return Ok(None),
        };
        if !tree.recursive {
            return Ok(None);
        }
        let plan = |op, input, output, key: &Option<String>, format, chunk_log2, overwrite| {
            Some(TreePlan {
                op,
                input,
                output,
                key: key.clone(),
                format,
                chunk_log2,
                overwrite,
                skip_existing: tree.skip_existing,
                quiet: tree.quiet,
            })
        };
        Ok(match command {
            Command::Encrypt {
                input,
                output,
                key,
                format,
                chunk_log2,
                force,
                ..
            } => {
                let format = match format {
                    FormatArg::Ringcrypt => Format::Ringcrypt,
                    FormatArg::Openssl => Format::Openssl,
                };
                let input = tidy(input);
                let output = match output {
                    Some(output) => output.clone(),
                    None => {
                        named(&input)?;
                        with_suffix(&input)
                    }
                };
                plan(
                    FileOp::Encrypt,
                    input,
                    output,
                    key,
                    format,
                    *chunk_log2,
                    *force,
                )
            }
            Command::Decrypt {
                input,
                output,
                key,
                force,
                ..
            } => {
                let input = tidy(input);
                let output = decrypt_output(&input, output.as_deref())?;
                plan(
                    FileOp::Decrypt,
                    input,
                    output,
                    key,
                    Format::Ringcrypt,
                    None,
                    *force,
                )
            }
            Command::Rewrap {
                input,
                output,
                in_place,
                key,
                chunk_log2,
                force,
                ..
            } => {
                let input = tidy(input);
                if *in_place && tree.skip_existing {
                    return Err(usage(
                        "--skip-existing with --in-place would skip every file (each output \
                         is its own input, and it verifies)",
                        "leave out --skip-existing, or write to another tree with -o OUTDIR",
                    ));
                }
                // In place, every file is replaced: that is the point.
                let (output, overwrite) = match output {
                    Some(output) => (output.clone(), *force),
                    None => (input.clone(), true),
                };
                let format = Format::Ringcrypt;
                plan(
                    FileOp::Rewrap,
                    input,
                    output,
                    key,
                    format,
                    *chunk_log2,
                    overwrite,
                )
            }
            _ => None,
        })
    }

    fn verb(&self) -> &'static str {
        match self.op {
            FileOp::Encrypt => "encrypted",
            FileOp::Decrypt => "decrypted",
            FileOp::Rewrap => "rewrapped",
        }
    }

    fn in_place(&self) -> bool {
        self.input == self.output
    }
}

/// `path` without trailing `/` or `.` components, so `photos/` gets the sibling
/// `photos.rcrypt` rather than `photos/.rcrypt`.
fn tidy(path: &Path) -> PathBuf {
    let tidy: PathBuf = path
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect();
    if tidy.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        tidy
    }
}

/// Refuses to derive an output name from a path without a final name (`.`, `..`, `/`).
fn named(input: &Path) -> Result<(), Failure> {
    if input.file_name().is_none() {
        return Err(usage(
            format!("cannot derive an output name from {}", input.display()),
            "pass -o OUTDIR",
        ));
    }
    Ok(())
}

/// Runs a tree job in this process.
fn run_tree_offline(cli: &Cli, plan: &TreePlan) -> Result<(), Failure> {
    no_json(cli)?;
    let ring = load_ring(cli.keys.as_deref())?;
    if plan.format == Format::Openssl {
        eprintln!(
            "warning: the openssl format is NOT authenticated: anyone who can modify the files \
             under {} can change what they decrypt to, undetected. Prefer the default \
             ringcrypt format.",
            plan.output.display()
        );
    }
    let job = TreeJob {
        op: plan.op,
        input: &plan.input,
        output: &plan.output,
        key: plan.key.as_deref(),
        format: plan.format,
        chunk_log2: plan.chunk_log2.unwrap_or(CHUNK_LOG2_DEFAULT),
        overwrite: plan.overwrite,
        skip_existing: plan.skip_existing,
        durability: Durability::Fsync,
        workers: 0,
    };
    let mut display = ProgressDisplay::new(plan.quiet);
    let summary = tree::run(&ring, &job, |snapshot| display.update(snapshot));
    display.finish();
    finish_tree(plan, &summary?, None)
}

/// Runs a tree job through the daemon: one recursive request, its `progress` lines shown.
fn run_tree_daemon(cli: &Cli, plan: &TreePlan) -> Result<(), Failure> {
    if plan.format == Format::Openssl {
        return Err(usage(
            "the daemon seals the ringcrypt format only",
            "pass --keys FILE to write the openssl format in this process",
        ));
    }
    offline_only(plan.chunk_log2.is_some(), "--chunk-log2")?;
    let cwd = std::env::current_dir().map_err(|e| {
        Failure::from(Error::new(
            Code::IoError,
            format!("cannot find the current directory: {e}"),
        ))
    })?;
    let mut spec = FileJobSpec::new(
        plan.op,
        wire_path(&cwd, &plan.input)?,
        wire_path(&cwd, &plan.output)?,
    );
    if spec.input == spec.output && !plan.in_place() {
        return Err(usage(
            format!("{} is the input directory itself", plan.output.display()),
            "choose another output directory",
        ));
    }
    spec.key = plan.key.clone();
    spec.recursive = true;
    spec.overwrite = plan.overwrite;
    spec.skip_existing = plan.skip_existing;
    let request = Request::File(spec);
    let mut client = Client::connect(&cli.socket)?;
    let json = cli.json;
    let mut display = ProgressDisplay::new(plan.quiet || json);
    let reply = client.request(&request, |line, reply| {
        if json {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout
                .write_all(line.as_bytes())
                .and_then(|()| stdout.flush());
        } else if let ReplyLine::Progress(progress) = reply {
            display.update(&snapshot_from(progress));
        }
    });
    display.finish();
    let done = match reply? {
        ReplyLine::Done(done) => done,
        other => return Err(unexpected_reply(&request, &other)),
    };
    let job = done.job.to_string();
    let summary = summary_from(done);
    if json {
        return match summary.files_failed {
            0 => Ok(()),
            failed => Err(files_failed(failed, Some(&job))),
        };
    }
    finish_tree(plan, &summary, Some(&job))
}

/// A `progress` reply as a snapshot for the display.
fn snapshot_from(p: &Progress) -> tree::Snapshot {
    tree::Snapshot {
        files_done: p.files_done,
        files_total: p.files_total,
        bytes_done: p.bytes_done,
        bytes_total: p.bytes_total,
        rate_bytes_per_sec: p.rate_bytes_per_sec,
        totals_final: p.totals_final,
    }
}

/// A tree job's `done` reply as a summary. Unknown error codes become `internal` (the list
/// may grow), keeping the daemon's code in the message.
fn summary_from(done: Done) -> Summary {
    let failures = done
        .failures
        .into_iter()
        .map(|f| {
            let (code, message) = match Code::parse(&f.code) {
                Some(code) => (code, f.message),
                None => (
                    Code::Internal,
                    format!("{} (error code {})", f.message, f.code),
                ),
            };
            tree::Failure {
                path: f.path,
                code,
                message,
            }
        })
        .collect();
    Summary {
        bytes_in: done.bytes_in,
        bytes_out: done.bytes_out,
        files_ok: done.files_ok,
        files_failed: done.files_failed,
        files_skipped: done.files_skipped,
        failures,
        failures_omitted: done.failures_omitted,
        skipped: done.skipped,
        skipped_omitted: done.skipped_omitted,
    }
}

/// Prints a tree job's summary (stdout), then its failures and skipped entries (stderr);
/// fails with exit 1 when any file failed.
fn finish_tree(plan: &TreePlan, summary: &Summary, job: Option<&str>) -> Result<(), Failure> {
    let job_text = job.map(|job| format!(", job {job}")).unwrap_or_default();
    {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(
            stdout,
            "{} tree {} -> {}: {} ok, {} failed, {} skipped ({} bytes -> {} bytes{job_text})",
            plan.verb(),
            plan.input.display(),
            plan.output.display(),
            summary.files_ok,
            summary.files_failed,
            summary.files_skipped,
            summary.bytes_in,
            summary.bytes_out,
        )
        .and_then(|()| stdout.flush());
    }
    let mut stderr = std::io::stderr().lock();
    for failure in &summary.failures {
        let _ = writeln!(
            stderr,
            "failed: {}: {} [{}]",
            failure.path.display(),
            failure.message,
            failure.code
        );
    }
    if summary.failures_omitted > 0 {
        let _ = writeln!(
            stderr,
            "failed: ... and {} more not listed",
            summary.failures_omitted
        );
    }
    // Outputs left because they exist and verify are the point of --skip-existing, not news.
    for skipped in summary
        .skipped
        .iter()
        .filter(|s| s.reason != tree::REASON_EXISTS)
    {
        let _ = writeln!(
            stderr,
            "skipped: {} ({})",
            skipped.path.display(),
            skipped.reason
        );
    }
    if summary.skipped_omitted > 0 {
        let _ = writeln!(
            stderr,
            "skipped: ... and {} more not listed",
            summary.skipped_omitted
        );
    }
    match summary.files_failed {
        0 => Ok(()),
        failed => Err(files_failed(failed, job)),
    }
}

fn files_failed(failed: u64, job: Option<&str>) -> Failure {
    let of_job = job.map(|job| format!(" of job {job}")).unwrap_or_default();
    Failure {
        exit: EXIT_FAILED,
        error: format!("{failed} file(s){of_job} failed"),
        hint: None,
    }
}

/// How a tree job's progress is shown on stderr: a bar on a terminal, a plain line at most
/// every [`PLAIN_PROGRESS_INTERVAL`] otherwise (logs, CI), nothing with `--quiet`.
enum ProgressDisplay {
    Quiet,
    Bar { bar: ProgressBar, counting: bool },
    Plain { last: Instant },
}

impl ProgressDisplay {
    fn new(quiet: bool) -> ProgressDisplay {
        if quiet {
            ProgressDisplay::Quiet
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(Self::counting_style());
            ProgressDisplay::Bar {
                bar,
                counting: true,
            }
        } else {
            ProgressDisplay::Plain {
                last: Instant::now(),
            }
        }
    }

    fn counting_style() -> ProgressStyle {
        ProgressStyle::with_template("{spinner} {msg} (counting…)")
            .expect("a fixed, valid template")
    }

    fn final_style() -> ProgressStyle {
        ProgressStyle::with_template("[{bar:30}] {msg}, eta {eta}")
            .expect("a fixed, valid template")
            .progress_chars("=> ")
    }

    fn update(&mut self, s: &tree::Snapshot) {
        match self {
            ProgressDisplay::Quiet => {}
            ProgressDisplay::Bar { bar, counting } => {
                if *counting && s.totals_final {
                    bar.set_style(Self::final_style());
                    *counting = false;
                }
                bar.set_length(s.bytes_total);
                bar.set_position(s.bytes_done.min(s.bytes_total));
                bar.set_message(progress_line(s));
                if *counting {
                    bar.tick();
                }
            }
            ProgressDisplay::Plain { last } => {
                if last.elapsed() >= PLAIN_PROGRESS_INTERVAL {
                    *last = Instant::now();
                    let counting = if s.totals_final {
                        ""
                    } else {
                        " (still counting)"
                    };
                    eprintln!("progress: {}{counting}", progress_line(s));
                }
            }
        }
    }

    fn finish(&self) {
        if let ProgressDisplay::Bar { bar, .. } = self {
            bar.finish_and_clear();
        }
    }
}

/// `120/5000 files, 12.3/50.0 MB, 40.1 MB/s` (MB = 10^6 bytes).
fn progress_line(s: &tree::Snapshot) -> String {
    let mb = |bytes: u64| bytes as f64 / 1e6;
    format!(
        "{}/{} files, {:.1}/{:.1} MB, {:.1} MB/s",
        s.files_done,
        s.files_total,
        mb(s.bytes_done),
        mb(s.bytes_total),
        mb(s.rate_bytes_per_sec)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn today_is_a_plausible_date() {
        let date = today();
        assert_eq!(date.len(), 8);
        assert!(date.as_str() >= "20240101", "{date}");
    }
}
