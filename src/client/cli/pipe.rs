//! Streams as a file job's input or output: `-` (standard input or output), `/dev/stdin`,
//! `/dev/stdout`, and any existing FIFO or character device named as a path. A stream has no
//! size and cannot be replaced atomically, so a job with a stream end runs through the
//! stream engines ([`offline::encrypt_stream`] and the others), not the file ones.
//!
//! The promises: a named output still appears only when complete (an unnamed temp file,
//! linked at the end); a decrypt writes each chunk to a stream only after its tag verified,
//! so a failure mid-stream leaves the consumer with verified but incomplete plaintext, and
//! exits 1 saying how much it got; a consumer that stops reading (`head`, a closed pager:
//! `EPIPE`) ends the run quietly with exit 0 and nothing left behind.
//!
//! Both ends are opened here as descriptors ([`Ends::open`]) whatever runs the job, so that
//! the daemon can later be handed them as it is handed a single file's descriptors; for now
//! the daemon does not stream, and `daemon::run_stream` refuses with a hint.
//!
//! What this room does not do: the crypto (the engines in [`crate::offline`]), trees (a
//! stream is never a tree), or several inputs (`many` refuses `-` among them).

use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use super::args::Cli;
use super::offline::{load_ring, no_json, openssl_warning};
use super::{EXIT_FAILED, Failure, FileCmd, print, refuse_directory, usage};
use crate::error::{Code, Error};
use crate::limits::CHUNK_LOG2_DEFAULT;
use crate::offline::output::{AtomicFile, Durability};
use crate::offline::{self, Format, Job, Outcome};
use crate::protocol::FileOp;

/// The exit code of a run whose consumer stopped reading: success, and nothing printed.
pub(super) const EXIT_QUIET: u8 = 0;

/// The mode of a file made from a stream: there is no input whose mode bits it could keep,
/// and it may hold plaintext, so only its owner may read it.
const STREAM_OUTPUT_MODE: u32 = 0o600;

/// One end of a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum End {
    /// Standard input (`-`, `/dev/stdin`).
    Stdin,
    /// Standard output (`-`, `/dev/stdout`).
    Stdout,
    /// An existing FIFO, character device or socket named by its path.
    Stream(PathBuf),
    /// A file, read as a file or written atomically.
    File(PathBuf),
}

impl End {
    fn is_stream(&self) -> bool {
        !matches!(self, End::File(_))
    }

    /// The end as messages name it.
    fn name(&self) -> PathBuf {
        match self {
            End::Stdin => PathBuf::from("standard input"),
            End::Stdout => PathBuf::from("standard output"),
            End::Stream(path) | End::File(path) => path.clone(),
        }
    }
}

/// Whether `path` names standard input.
fn is_stdin(path: &Path) -> bool {
    ["-", "/dev/stdin", "/dev/fd/0", "/proc/self/fd/0"]
        .iter()
        .any(|name| path == Path::new(name))
}

/// Whether `path` names standard output.
fn is_stdout(path: &Path) -> bool {
    ["-", "/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"]
        .iter()
        .any(|name| path == Path::new(name))
}

/// Whether `path` exists and is a stream: a FIFO, a character device or a socket.
fn is_stream_path(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|meta| {
        let kind = meta.file_type();
        kind.is_fifo() || kind.is_char_device() || kind.is_socket()
    })
}

/// The two ends of a job with at least one stream.
#[derive(Clone, Debug)]
pub(super) struct Ends {
    pub(super) input: End,
    pub(super) output: End,
}

impl Ends {
    /// The ends of `cmd`'s one input when either is a stream; `None` for a job between
    /// files. Refuses what a stream cannot do (`-r`, `--in-place`).
    pub(super) fn of(cmd: &FileCmd) -> Result<Option<Ends>, Failure> {
        let path = cmd.input();
        let input = if is_stdin(path) {
            End::Stdin
        } else if is_stream_path(path) {
            End::Stream(path.to_path_buf())
        } else {
            End::File(path.to_path_buf())
        };
        let output = match &cmd.output {
            Some(out) if is_stdout(out) => End::Stdout,
            Some(out) if is_stream_path(out) => End::Stream(out.clone()),
            Some(out) => End::File(out.clone()),
            // A stream's output defaults to standard output: it has no name to derive one.
            None if input.is_stream() && !cmd.in_place => End::Stdout,
            None => return Ok(None),
        };
        if !input.is_stream() && !output.is_stream() {
            return Ok(None);
        }
        if cmd.tree.recursive {
            return Err(usage(
                "-r walks directories, and a stream (`-`, a pipe or a device) is not one",
                "leave out -r, or name a directory",
            ));
        }
        if cmd.in_place {
            return Err(usage(
                "--in-place replaces a file, and standard input is not one",
                "pass -o OUT (or -o - for standard output)",
            ));
        }
        Ok(Some(Ends { input, output }))
    }

    /// Opens both ends as descriptors: standard input and output duplicated, a stream path
    /// opened, a file input opened for reading, a file output begun as an unnamed temp file.
    pub(super) fn open(&self, overwrite: bool) -> Result<Opened, Failure> {
        let input = match &self.input {
            End::Stdin => dup(std::io::stdin().as_fd(), "standard input")?,
            End::Stream(path) | End::File(path) => {
                File::open(path).map_err(|e| Failure::from(Error::io("open", path, e)))?
            }
            End::Stdout => unreachable!("standard output is never an input"),
        };
        let output = match &self.output {
            End::Stdout => Output::Stream(dup(std::io::stdout().as_fd(), "standard output")?),
            End::Stream(path) => Output::Stream(
                File::options()
                    .write(true)
                    .open(path)
                    .map_err(|e| Failure::from(Error::io("open", path, e)))?,
            ),
            End::File(path) => Output::File(AtomicFile::create(path, overwrite)?),
            End::Stdin => unreachable!("standard input is never an output"),
        };
        Ok(Opened { input, output })
    }
}

fn dup(fd: std::os::fd::BorrowedFd<'_>, what: &str) -> Result<File, Failure> {
    fd.try_clone_to_owned()
        .map(File::from)
        .map_err(|e| Failure::from(Error::new(Code::IoError, format!("cannot use {what}: {e}"))))
}

/// Both ends, open.
pub(super) struct Opened {
    pub(super) input: File,
    pub(super) output: Output,
}

/// The output end, open.
pub(super) enum Output {
    /// Written as it comes.
    Stream(File),
    /// A named output in the making: linked into place only when complete.
    File(AtomicFile),
}

/// Counts what went through, and remembers whether the reader of an output went away
/// (`EPIPE`).
struct Counted<T> {
    inner: T,
    written: u64,
    closed: bool,
}

impl<T> Counted<T> {
    fn new(inner: T) -> Counted<T> {
        Counted {
            inner,
            written: 0,
            closed: false,
        }
    }
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.written += n as u64;
        Ok(n)
    }
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let result = self.inner.write(buf);
        match &result {
            Ok(n) => self.written += *n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => self.closed = true,
            Err(_) => {}
        }
        result
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Runs a job with a stream end in this process.
pub(super) fn run_offline(cli: &Cli, cmd: &FileCmd, ends: Ends) -> Result<(), Failure> {
    no_json(cli)?;
    if let End::File(path) = &ends.input {
        refuse_directory(cmd, path)?;
    }
    let output_path = ends.output.name();
    if cmd.op != FileOp::Decrypt && ends.output == End::Stdout && std::io::stdout().is_terminal() {
        return Err(usage(
            "refusing to write ciphertext to a terminal",
            "redirect standard output (> FILE) or pass -o FILE",
        ));
    }
    let ring = load_ring(cli.keys.as_deref())?;
    let input_name = ends.input.name();
    let job = Job {
        input: &input_name,
        output: &output_path,
        key: cmd.key.as_deref(),
        format: cmd.format,
        chunk_log2: cmd.chunk_log2.unwrap_or(CHUNK_LOG2_DEFAULT),
        overwrite: cmd.force,
        durability: Durability::Fsync,
    };
    if job.format == Format::Openssl {
        openssl_warning(&output_path);
    }
    let Opened {
        mut input,
        mut output,
    } = ends.open(cmd.force)?;
    let sink = match &mut output {
        Output::Stream(file) => file,
        Output::File(atomic) => atomic.file(),
    };
    let mut out = Counted::new(sink);
    let mut read = Counted::new(&mut input);
    let result = match cmd.op {
        FileOp::Encrypt => offline::encrypt_stream(&ring, &job, &mut read, &mut out),
        FileOp::Decrypt => offline::decrypt_stream(&ring, &job, &mut read, &mut out),
        FileOp::Rewrap => offline::rewrap_stream(&ring, &job, &mut read, &mut out),
        FileOp::Verify => return Err(super::verify_writes_nothing()),
    };
    let (written, closed) = (out.written, out.closed);
    let outcome = match result {
        Ok(outcome) => Outcome {
            bytes_in: read.written,
            ..outcome
        },
        // The consumer stopped reading: what it wanted, it has. Nothing else to do.
        Err(_) if closed => return Err(quiet()),
        Err(err) => return Err(mid_stream(cmd.op, err, &ends.output, written)),
    };
    if let Output::File(atomic) = output {
        atomic.commit(STREAM_OUTPUT_MODE, cmd.force, Durability::Fsync)?;
        print::report(print::verb(cmd.op), &job, &outcome);
    }
    Ok(())
}

/// The run ends with exit 0 and no message.
fn quiet() -> Failure {
    Failure {
        exit: EXIT_QUIET,
        error: String::new(),
        hint: None,
        code: "closed",
        json_shown: true,
    }
}

/// A failure after part of the output may have gone to a stream: says how much, and what
/// it is worth.
fn mid_stream(op: FileOp, err: Error, output: &End, written: u64) -> Failure {
    let mut failure = Failure::from(err);
    if output.is_stream() && written > 0 {
        let got = match op {
            FileOp::Decrypt | FileOp::Verify => format!(
                "{} received {written} bytes of plaintext before the failure (of a ringcrypt \
                 file, only chunks whose tags verified); the rest is missing: treat what it \
                 got as incomplete",
                output.name().display()
            ),
            FileOp::Encrypt | FileOp::Rewrap => format!(
                "{} received {written} bytes before the failure; they do not form a complete \
                 file and will not decrypt: discard them",
                output.name().display()
            ),
        };
        failure.hint = Some(got);
    }
    failure.exit = EXIT_FAILED;
    failure
}
