//! A single-file job in this process (`--keys FILE`): the key ring loaded here, the job run
//! by [`crate::offline`], its line printed. Also what the tree's offline mode shares with it:
//! loading the ring, and refusing `--json` (there are no daemon replies to print).
//!
//! What this room does not do: trees (`tree`), anything through the daemon (`daemon`), or the
//! crypto and the atomic output themselves ([`crate::offline`] and [`crate::offline::output`]).

use std::path::Path;

use super::args::{Cli, Command};
use super::{Failure, decrypt_output, print, usage};
use crate::crypto::keys::KeyRing;
use crate::error::{Code, Error};
use crate::limits::CHUNK_LOG2_DEFAULT;
use crate::offline::output::Durability;
use crate::offline::{self, Format, Job};
use crate::tree_rules::with_suffix;

/// Runs an encrypt, decrypt or rewrap of one file in this process.
pub(super) fn run(cli: &Cli) -> Result<(), Failure> {
    no_json(cli)?;
    match &cli.command {
        Command::Encrypt {
            input,
            output,
            key,
            format,
            chunk_log2,
            force,
            tree: _,
        } => {
            let ring = load_ring(cli.keys.as_deref())?;
            let output = output.clone().unwrap_or_else(|| with_suffix(input));
            let format = format.format();
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
            print::report("encrypted", &job, &outcome);
            Ok(())
        }
        Command::Decrypt {
            input,
            output,
            key,
            force,
            tree: _,
        } => {
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
            print::report("decrypted", &job, &outcome);
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
            print::report("rewrapped", &job, &outcome);
            Ok(())
        }
        _ => unreachable!("only encrypt, decrypt and rewrap run offline"),
    }
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
