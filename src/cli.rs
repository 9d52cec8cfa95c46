//! The `ringcrypt` command line: parse arguments, run, map the outcome to the exit codes of
//! DESIGN §1 (0 success, 1 the job failed, 2 usage error, 3 the daemon could not be reached).
//!
//! Errors print as `error: ...`, followed by `hint: ...` where a next step is clear.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::error::{Code, Error};
use crate::keys::{self, KeyRing};
use crate::limits::{CHUNK_LOG2_DEFAULT, CHUNK_LOG2_MAX, CHUNK_LOG2_MIN};
use crate::offline::{self, Format, Job, Outcome};
use crate::output::Durability;

/// Exit code: the job failed; the message says why.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: the command line was wrong.
pub const EXIT_USAGE: u8 = 2;

const AFTER_HELP: &str = "\
Examples:
  ringcrypt keygen --name prod-2026 >> keys.toml && chmod 600 keys.toml
  ringcrypt --keys keys.toml encrypt report.pdf            # writes report.pdf.rcrypt
  ringcrypt --keys keys.toml decrypt report.pdf.rcrypt -o copy.pdf
  ringcrypt --keys keys.toml rewrap old.rcrypt --in-place  # re-encrypt under the default key

Exit codes: 0 success, 1 the job failed, 2 usage error, 3 the daemon could not be reached.";

/// Authenticated file encryption (AES-256-CBC + HMAC-SHA256, RCRYPT v1).
#[derive(Parser, Debug)]
#[command(name = "ringcrypt", version, after_help = AFTER_HELP, max_term_width = 100)]
pub struct Cli {
    /// Key ring (TOML, mode 0600): do the work in this process with these keys.
    #[arg(long, global = true, value_name = "FILE", env = "RINGCRYPT_KEYS")]
    keys: Option<PathBuf>,

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

    /// Encrypt a file (default output: IN.rcrypt).
    #[command(after_help = "\
Examples:
  ringcrypt --keys keys.toml encrypt data.csv                   # -> data.csv.rcrypt
  ringcrypt --keys keys.toml encrypt data.csv -o /backup/d.rcrypt --key prod-2026
  ringcrypt --keys keys.toml encrypt old.tar --format openssl --key legacy

The output appears only when complete and on disk; an existing output is never replaced
without --force.")]
    Encrypt {
        /// The file to encrypt.
        input: PathBuf,
        /// Where to write (default: IN.rcrypt).
        #[arg(short, long, value_name = "OUT")]
        output: Option<PathBuf>,
        /// Key to encrypt with (default: the key ring's default).
        #[arg(long, value_name = "NAME")]
        key: Option<String>,
        /// Output format. `openssl` is what `openssl enc -aes-256-cbc -pbkdf2` writes; it is
        /// NOT authenticated, so use it only for tools that need it.
        #[arg(long, value_enum, default_value_t = FormatArg::Ringcrypt)]
        format: FormatArg,
        /// Chunk size as a power of two, 12 (4 KiB) to 24 (16 MiB).
        #[arg(long, value_name = "N", default_value_t = CHUNK_LOG2_DEFAULT,
              value_parser = clap::value_parser!(u8).range(CHUNK_LOG2_MIN as i64..=CHUNK_LOG2_MAX as i64))]
        chunk_log2: u8,
        /// Replace OUT atomically if it exists.
        #[arg(short, long)]
        force: bool,
    },

    /// Decrypt a file (ringcrypt or openssl format, detected; default output: IN without .rcrypt).
    #[command(after_help = "\
Examples:
  ringcrypt --keys keys.toml decrypt data.csv.rcrypt            # -> data.csv
  ringcrypt --keys keys.toml decrypt legacy.enc -o legacy.tar --key legacy

A ringcrypt file names its key; every chunk is verified before any plaintext is written, and
a file that fails verification leaves nothing behind.")]
    Decrypt {
        /// The file to decrypt.
        input: PathBuf,
        /// Where to write (default: IN without its .rcrypt suffix).
        #[arg(short, long, value_name = "OUT")]
        output: Option<PathBuf>,
        /// Passphrase entry for openssl-format files (ringcrypt files name their own key).
        #[arg(long, value_name = "NAME")]
        key: Option<String>,
        /// Replace OUT atomically if it exists.
        #[arg(short, long)]
        force: bool,
    },

    /// Re-encrypt a file under the key ring's default key, with no plaintext on disk.
    #[command(after_help = "\
Examples:
  ringcrypt --keys keys.toml rewrap a.rcrypt -o a.new.rcrypt
  ringcrypt --keys keys.toml rewrap a.rcrypt --in-place         # after making a new key default
  ringcrypt --keys keys.toml rewrap legacy.enc -o legacy.rcrypt --key legacy   # migrate

The source may be a ringcrypt or openssl-format file; the result is always ringcrypt.")]
    Rewrap {
        /// The encrypted file.
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
        /// Chunk size of the new file as a power of two, 12 to 24.
        #[arg(long, value_name = "N", default_value_t = CHUNK_LOG2_DEFAULT,
              value_parser = clap::value_parser!(u8).range(CHUNK_LOG2_MIN as i64..=CHUNK_LOG2_MAX as i64))]
        chunk_log2: u8,
        /// Replace OUT atomically if it exists.
        #[arg(short, long)]
        force: bool,
    },
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
    match &cli.command {
        Command::Keygen { name } => keygen(name.as_deref()),
        Command::Encrypt {
            input,
            output,
            key,
            format,
            chunk_log2,
            force,
        } => {
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
                chunk_log2: *chunk_log2,
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
        } => {
            let output = match output {
                Some(output) => output.clone(),
                None => without_suffix(input).ok_or_else(|| {
                    usage(
                        format!(
                            "cannot guess an output name: {} does not end in .rcrypt",
                            input.display()
                        ),
                        "pass -o OUT",
                    )
                })?,
            };
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
                chunk_log2: *chunk_log2,
                overwrite,
                durability: Durability::Fsync,
            };
            let outcome = offline::rewrap(&ring, &job)?;
            report("rewrapped", &job, &outcome);
            Ok(())
        }
    }
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

fn with_suffix(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".rcrypt");
    PathBuf::from(name)
}

fn without_suffix(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".rcrypt")?;
    (!stem.is_empty()).then(|| path.with_file_name(stem))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names() {
        assert_eq!(
            with_suffix(Path::new("a/b.txt")),
            PathBuf::from("a/b.txt.rcrypt")
        );
        assert_eq!(
            without_suffix(Path::new("a/b.txt.rcrypt")),
            Some(PathBuf::from("a/b.txt"))
        );
        assert_eq!(without_suffix(Path::new("a/b.txt")), None);
        assert_eq!(without_suffix(Path::new("a/.rcrypt")), None);
    }

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
