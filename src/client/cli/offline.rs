//! A single-file job in this process (`--keys FILE`): the key ring loaded here, the job run
//! by [`crate::offline`], its line printed. Also what the tree's offline mode shares with it:
//! loading the ring, and refusing `--json` (there are no daemon replies to print).
//!
//! What this room does not do: trees (`tree`), anything through the daemon (`daemon`), or the
//! crypto and the atomic output themselves ([`crate::offline`] and [`crate::offline::output`]).

use std::path::{Path, PathBuf};

use super::args::Cli;
use super::{Failure, FileCmd, decrypt_output, print, usage};
use crate::crypto::keys::KeyRing;
use crate::error::{Code, Error};
use crate::limits::CHUNK_LOG2_DEFAULT;
use crate::offline::output::Durability;
use crate::offline::{self, Format, Job, Outcome};
use crate::protocol::FileOp;
use crate::tree_rules::with_suffix;

/// Runs an encrypt, decrypt or rewrap of one file in this process.
pub(super) fn run(cli: &Cli, cmd: &FileCmd) -> Result<(), Failure> {
    no_json(cli)?;
    let ring = load_ring(cli.keys.as_deref())?;
    let (outcome, job) = run_one(&ring, cmd, |job| {
        if job.format == Format::Openssl {
            openssl_warning(job.output);
        }
    })?;
    print::report(print::verb(cmd.op), &job.as_job(), &outcome);
    Ok(())
}

/// The paths and options of one offline file job, owned.
pub(super) struct OwnedJob {
    pub(super) input: PathBuf,
    pub(super) output: PathBuf,
    key: Option<String>,
    format: Format,
    chunk_log2: u8,
    overwrite: bool,
}

impl OwnedJob {
    pub(super) fn as_job(&self) -> Job<'_> {
        Job {
            input: &self.input,
            output: &self.output,
            key: self.key.as_deref(),
            format: self.format,
            chunk_log2: self.chunk_log2,
            overwrite: self.overwrite,
            durability: Durability::Fsync,
        }
    }
}

/// The job for `cmd`'s one input: its output (given or default) and options.
pub(super) fn job_for(cmd: &FileCmd) -> Result<OwnedJob, Failure> {
    let input = cmd.input().to_path_buf();
    let (input, output, overwrite) = match cmd.op {
        FileOp::Encrypt => {
            let output = cmd.output.clone().unwrap_or_else(|| with_suffix(&input));
            (input, output, cmd.force)
        }
        FileOp::Decrypt => {
            let output = decrypt_output(&input, cmd.output.as_deref())?;
            (input, output, cmd.force)
        }
        FileOp::Rewrap => match &cmd.output {
            Some(output) => {
                if same_path(&input, output) {
                    return Err(Error::new(
                        Code::BadRequest,
                        format!(
                            "{} is the input itself; use --in-place to replace the input",
                            output.display()
                        ),
                    )
                    .into());
                }
                (input, output.clone(), cmd.force)
            }
            None => {
                debug_assert!(cmd.in_place, "clap requires -o or --in-place");
                // Replace the file a symlink points to, not the link itself.
                let target =
                    std::fs::canonicalize(&input).map_err(|e| Error::io("resolve", &input, e))?;
                (target.clone(), target, true)
            }
        },
        FileOp::Verify => return Err(super::verify_writes_nothing()),
    };
    Ok(OwnedJob {
        input,
        output,
        key: cmd.key.clone(),
        format: cmd.format,
        chunk_log2: cmd.chunk_log2.unwrap_or(CHUNK_LOG2_DEFAULT),
        overwrite,
    })
}

/// Runs `cmd`'s one input in this process; `before` sees the job first (for a warning).
pub(super) fn run_one(
    ring: &KeyRing,
    cmd: &FileCmd,
    before: impl FnOnce(&Job),
) -> Result<(Outcome, OwnedJob), Failure> {
    let owned = job_for(cmd)?;
    let job = owned.as_job();
    before(&job);
    let outcome = match cmd.op {
        FileOp::Encrypt => offline::encrypt(ring, &job)?,
        FileOp::Decrypt => offline::decrypt(ring, &job)?,
        FileOp::Rewrap => offline::rewrap(ring, &job)?,
        FileOp::Verify => return Err(super::verify_writes_nothing()),
    };
    Ok((outcome, owned))
}

/// The openssl format's warning, on stderr before a job writes it.
pub(super) fn openssl_warning(output: &Path) {
    eprintln!(
        "warning: the openssl format is NOT authenticated: anyone who can modify {} \
         can change what it decrypts to, undetected. Prefer the default ringcrypt format.",
        output.display()
    );
}

/// `--json` prints the daemon's replies; offline jobs have none.
pub(super) fn no_json(cli: &Cli) -> Result<(), Failure> {
    if cli.json {
        return Err(usage(
            "--json prints the daemon's replies, and --keys works without the daemon",
            "leave out --keys (and RINGCRYPT_KEYS) to send the job to ringcryptd",
        ));
    }
    Ok(())
}

pub(super) fn load_ring(path: Option<&Path>) -> Result<KeyRing, Failure> {
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
