//! The command line's shape: the clap definitions of `ringcrypt`, its subcommands and their
//! options, and every help text (`--help`, the examples after it, `completions` derives from
//! the same definitions). What the user typed, as data.
//!
//! What this room does not do: decide what a command means or run it (`mod.rs` dispatches,
//! the other rooms carry out), or print anything beyond what clap prints for `--help` and
//! usage errors. The doc comments below are help text: changing one changes `--help`.

use std::path::PathBuf;

use crate::daemon::DEFAULT_SOCKET;
use crate::error::Error;
use crate::limits::{CHUNK_LOG2_MAX, CHUNK_LOG2_MIN};
use crate::protocol::Format;
use crate::protocol::JobId;
use crate::tree_rules::Partition;
use clap::{Args, Parser, Subcommand, ValueEnum};

const AFTER_HELP: &str = "\
Examples:
  ringcrypt encrypt report.pdf                             # via ringcryptd: report.pdf.rcrypt
  ringcrypt encrypt -r photos                              # a directory tree -> photos.rcrypt/
  ringcrypt --socket ./ringcrypt-dev/ringcrypt.sock ping
  ringcrypt --json decrypt report.pdf.rcrypt -o copy.pdf   # the daemon's reply lines, as JSON
  ringcrypt keygen --name prod-2026 -o keys.toml           # a new key ring, mode 0600
  ringcrypt --keys keys.toml encrypt report.pdf            # offline: no daemon
  ringcrypt --keys keys.toml decrypt report.pdf.rcrypt -o copy.pdf
  ringcrypt --keys keys.toml rewrap old.rcrypt --in-place  # re-encrypt under the default key
  ringcrypt --keys keys.toml decrypt -r photos.rcrypt      # offline, all cores -> photos/
  tar c docs | ringcrypt encrypt - -o docs.tar.rcrypt      # a pipe, through the daemon
  ringcrypt decrypt docs.tar.rcrypt -o - | tar x
  tar c docs | ringcrypt --keys keys.toml encrypt - -o docs.tar.rcrypt   # a pipe, offline
  ringcrypt encrypt a.pdf b.pdf c.pdf -o /backup/          # several inputs into one directory
  ringcrypt verify -r /backup                              # check every chunk, write nothing
  ringcrypt inspect report.pdf.rcrypt                      # header fields, no key needed
  ringcrypt completions bash > ~/.local/share/bash-completion/completions/ringcrypt

`-` (or /dev/stdin, /dev/stdout) is standard input or output, offline and through the
daemon (which is passed the pipes and streams them).

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
    pub(super) keys: Option<PathBuf>,

    /// The daemon's socket.
    #[arg(long, global = true, value_name = "PATH", env = "RINGCRYPT_SOCKET",
          default_value = DEFAULT_SOCKET)]
    pub(super) socket: PathBuf,

    /// Print JSON lines to stdout and nothing else: the daemon's reply lines as they arrive
    /// (verify and inspect: a line per file), or one `error` line when the client itself
    /// refuses.
    #[arg(long, global = true)]
    pub(super) json: bool,

    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Subcommand, Debug)]
pub(super) enum Command {
    /// Print a new [[key]] entry with a fresh random secret, ready to append to a key ring,
    /// or write a new key ring file with -o.
    #[command(after_help = "\
Examples:
  ringcrypt keygen -o keys.toml                            # a new ring file, mode 0600
  ringcrypt keygen --name prod-2027 >> keys.toml           # add a key for rotation
  ringcrypt keygen > keys.toml && chmod 600 keys.toml      # the same as -o, by hand

-o creates FILE with mode 0600 (a key ring with wider permissions is refused) and never
replaces an existing file unless --force is given (then atomically). A ring with one active
key uses it by default; with several, set `default = \"NAME\"` at the top.")]
    Keygen {
        /// Name of the key (default: key-YYYYMMDD-<random>).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Write a new key ring file (mode 0600) instead of printing the entry.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// With -o: replace FILE if it exists (atomically; its old keys are lost).
        #[arg(short, long, requires = "output")]
        force: bool,
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
  ringcrypt encrypt a.csv b.csv -r photos -o /backup/           # several inputs into /backup/
  ringcrypt encrypt -r /shared/in -o /shared/out --partition 2/8 --skip-existing
                                             # this host's eighth of a tree that 8 hosts share
  tar c photos | ringcrypt encrypt - -o photos.tar.rcrypt       # a pipe, through the daemon
  ringcrypt --keys keys.toml encrypt - < notes.txt > notes.txt.rcrypt

The output appears only when complete and on disk; an existing output is never replaced
without --force. With -r, every file FILE becomes OUT/FILE.rcrypt (OUT defaults to the
sibling directory IN.rcrypt); the summary lists failed and skipped entries, and the exit
code is 1 if any file failed. With several inputs, -o names an existing directory and each
input keeps its own name there (IN.rcrypt); without -o each goes beside its input.

--partition I/N splits one tree over N runs (a Kubernetes Indexed Job, a Slurm array): each
does the files whose path hash falls in its part, and with --skip-existing a retried run
finishes its part without redoing what is there. docs/fleet.md has the whole recipe.

IN `-` (or /dev/stdin) reads standard input, and then the output defaults to standard
output; `-o -` (or /dev/stdout) writes standard output, offline and through the daemon. A
named output still appears only when complete (mode 0600).")]
    Encrypt {
        /// The files (or, with -r, directories) to encrypt; `-` for standard input.
        #[arg(required = true, value_name = "IN")]
        inputs: Vec<PathBuf>,
        /// Where to write (default: IN.rcrypt; with -r, a directory; with several inputs, an
        /// existing directory; `-` for standard output).
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
  ringcrypt decrypt -r /shared/out -o /shared/back --partition $JOB_COMPLETION_INDEX/4 --skip-existing
  ringcrypt decrypt a.csv.rcrypt b.csv.rcrypt -o restored/      # several inputs
  ringcrypt decrypt photos.tar.rcrypt -o - | tar x              # to a pipe, via the daemon
  curl -s https://host/x.rcrypt | ringcrypt --keys keys.toml decrypt - -o x

A ringcrypt file names its key; every chunk is verified before any plaintext is written, and
a file that fails verification leaves nothing behind. With -r, every FILE.rcrypt becomes
OUT/FILE; other files are skipped (\"not a .rcrypt file\"). Without -o, IN must end in
.rcrypt (the output is IN without it); no other name is guessed. With several inputs, -o
names an existing directory.

To a pipe (`-o -`), offline or through the daemon, each chunk is written only after its tag
has verified. If a later chunk fails, ringcrypt stops, says so and exits 1, but the consumer
may have received the earlier, verified chunks: treat what it got as incomplete. A consumer
that stops reading early (head) ends the run quietly with exit 0.")]
    Decrypt {
        /// The files (or, with -r, directories) to decrypt; `-` for standard input.
        #[arg(required = true, value_name = "IN")]
        inputs: Vec<PathBuf>,
        /// Where to write (default: IN without its .rcrypt suffix; with -r, a directory; with
        /// several inputs, an existing directory; `-` for standard output).
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
  ringcrypt rewrap a.rcrypt b.rcrypt c.rcrypt --in-place        # several inputs
  ringcrypt --keys keys.toml rewrap - -o - < old.rcrypt > new.rcrypt

The source may be a ringcrypt or openssl-format file; the result is always ringcrypt. With
-r, file names are kept and either -o OUTDIR or --in-place is required (no default). With
several inputs, -o names an existing directory.")]
    Rewrap {
        /// The encrypted files (or, with -r, directories); `-` for standard input.
        #[arg(required = true, value_name = "IN")]
        inputs: Vec<PathBuf>,
        /// Where to write the re-encrypted file (`-` for standard output).
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

    /// List the daemon's jobs (queued, running and recently finished), running and queued
    /// first, then the newest.
    #[command(after_help = "\
Examples:
  ringcrypt jobs                                   # the first 50, and how many more there are
  ringcrypt jobs --state failed                    # what went wrong lately
  ringcrypt jobs --state running --state queued --limit 0
  ringcrypt --json jobs --state running | jq -r '.jobs[].job'

--state and --limit apply to --json too: the `jobs` line printed holds only the jobs kept.")]
    Jobs {
        /// Only jobs in this state (repeatable).
        #[arg(long, value_enum, value_name = "STATE")]
        state: Vec<JobStateArg>,
        /// Show at most N jobs; 0 shows all.
        #[arg(long, value_name = "N", default_value_t = 50)]
        limit: usize,
    },

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

    /// Check every chunk's tag of sealed files or trees, writing no plaintext (through the
    /// daemon, or offline with --keys).
    #[command(after_help = "\
Examples:
  ringcrypt verify report.pdf.rcrypt                     # through ringcryptd, its key ring
  ringcrypt verify -r /backup                            # a weekly scrub of a whole tree
  ringcrypt --json verify -r /backup | jq -c 'select(.ok == false)'
  ringcrypt --keys keys.toml verify -r /backup           # offline, with this key ring

Each file is reported ok, or failed with its code: auth_failed (damaged or not made with
the key ring), unknown_key, key_retired or bad_format (not a ringcrypt file). With -r, every
*.rcrypt file under each directory is checked; symlinks are not followed, other files are
skipped. Through the daemon the shards check the files and a tree's ok files are counted
(`ok: N files under DIR`), not named; its failures and skipped entries are named. The
summary ends the run; the exit code is 1 if any file failed. --json prints one line per
file (and a `tree` line per tree through the daemon) and a summary line.")]
    Verify {
        /// Sealed files (or, with -r, directories).
        #[arg(required = true, value_name = "FILE")]
        inputs: Vec<PathBuf>,
        /// The inputs are directories: check every .rcrypt file under them.
        #[arg(short, long)]
        recursive: bool,
        /// No per-file `ok` lines (failures and the summary are still printed).
        #[arg(short, long)]
        quiet: bool,
    },

    /// Show a sealed file's header: format, version, chunk size, key id, sizes, records. No
    /// key needed; with --keys, also the key's name and state.
    #[command(after_help = "\
Examples:
  ringcrypt inspect report.pdf.rcrypt
  ringcrypt --keys keys.toml inspect report.pdf.rcrypt     # + key name and state
  ringcrypt --json inspect *.rcrypt | jq -r .key_id

Reads only the header and the file's length; nothing is verified (that is `verify`). Without
a key the plaintext size is a range of 16 bytes (the padding is encrypted); with --keys, when
the header and the final chunk verify, it is exact. Exit code 1 if a file is not a ringcrypt
or openssl file.")]
    Inspect {
        /// Sealed files.
        #[arg(required = true, value_name = "FILE")]
        inputs: Vec<PathBuf>,
    },

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
#[derive(Args, Debug, Clone, Copy, Default)]
pub(super) struct TreeArgs {
    /// IN is a directory: process every regular file under it into the same relative path
    /// under the output directory (created if missing). Directories keep their mode bits,
    /// files their mode bits and mtime; symlinks are never followed, and symlinks, FIFOs,
    /// sockets and devices are skipped. One bad file never stops the tree.
    #[arg(short, long)]
    pub(super) recursive: bool,
    /// With -r: leave outputs that already exist and verify (ringcrypt outputs: they open
    /// with this key ring; decrypt outputs: they exist) and replace those that do not. For
    /// resuming an interrupted tree.
    #[arg(long, requires = "recursive", conflicts_with = "force")]
    pub(super) skip_existing: bool,
    /// No progress display, for a tree or a single file above 64 MiB (the summary is still
    /// printed).
    #[arg(short, long)]
    pub(super) quiet: bool,
    /// With -r: do only partition I of N (I from 0 to N-1), so that N runs, on N hosts,
    /// cover the tree once. A file belongs to partition I when the first 8 bytes of the
    /// SHA-256 of its path under IN, little-endian, modulo N, are I (docs/fleet.md). Every
    /// run creates all the directories; counts are the partition's own. The first run writes
    /// a marker with N at the output root, and a run with another N is refused
    /// [partition_mismatch]. With --skip-existing, a failed run can simply be run again.
    #[arg(long, value_name = "I/N", requires = "recursive", value_parser = parse_partition)]
    pub(super) partition: Option<Partition>,
}

fn parse_partition(text: &str) -> Result<Partition, String> {
    Partition::parse(text)
}

fn parse_job(text: &str) -> Result<JobId, String> {
    text.parse().map_err(|err: Error| err.message)
}

/// A job state, as `jobs --state` takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum JobStateArg {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobStateArg {
    /// The state as the daemon spells it.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            JobStateArg::Queued => "queued",
            JobStateArg::Running => "running",
            JobStateArg::Done => "done",
            JobStateArg::Failed => "failed",
            JobStateArg::Cancelled => "cancelled",
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(super) enum FormatArg {
    /// RCRYPT v1, authenticated (the default).
    Ringcrypt,
    /// `openssl enc -aes-256-cbc -pbkdf2` compatible; NOT authenticated.
    Openssl,
}

impl FormatArg {
    /// The format the engines know by this name.
    pub(super) fn format(self) -> Format {
        match self {
            FormatArg::Ringcrypt => Format::Ringcrypt,
            FormatArg::Openssl => Format::Openssl,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
