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
//! Both ends are opened here as descriptors ([`Ends::open`]) whatever runs the job: offline
//! ([`run_offline`]) this process streams them; through the daemon ([`run_daemon`]) they are
//! passed with `"fds": true`, as a single file's are, and the daemon streams them through a
//! shard's reactor. An output the daemon cannot be handed (a regular file on standard
//! output, a named temp file where the file system has no `O_TMPFILE`) is fed through a pipe
//! this process copies from.
//!
//! What this room does not do: the crypto (the engines in [`crate::offline`]), trees (a
//! stream is never a tree), or several inputs (`many` refuses `-` among them).

use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use super::args::Cli;
use super::daemon::{current_dir, daemon_settings, wire_path};
use super::offline::{load_ring, no_json, openssl_warning};
use super::print::{self as shown_print, Shown};
use super::tree::{ProgressDisplay, snapshot_from};
use super::{EXIT_FAILED, Failure, FileCmd, print, refuse_directory, usage};
use crate::client::conn::Client;
use crate::error::{Code, Error};
use crate::limits::CHUNK_LOG2_DEFAULT;
use crate::offline::output::{AtomicFile, Durability};
use crate::offline::{self, Format, Job, Outcome};
use crate::protocol::FileOp;
use crate::protocol::{FileJobSpec, ReplyLine, Request};

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

/// What both modes refuse before anything is opened: a directory as input, ciphertext to
/// a terminal.
fn refuse_early(cmd: &FileCmd, ends: &Ends) -> Result<(), Failure> {
    if let End::File(path) = &ends.input {
        refuse_directory(cmd, path)?;
    }
    if cmd.op != FileOp::Decrypt && ends.output == End::Stdout && std::io::stdout().is_terminal() {
        return Err(usage(
            "refusing to write ciphertext to a terminal",
            "redirect standard output (> FILE) or pass -o FILE",
        ));
    }
    Ok(())
}

/// Runs a job with a stream end in this process.
pub(super) fn run_offline(cli: &Cli, cmd: &FileCmd, ends: Ends) -> Result<(), Failure> {
    no_json(cli)?;
    refuse_early(cmd, &ends)?;
    let output_path = ends.output.name();
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
        Err(err) => {
            return Err(mid_stream(
                cmd.op,
                Failure::from(err),
                &ends.output,
                Some(written),
            ));
        }
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

/// A failure after part of the output may have gone to a stream: says how much (when this
/// process knows: offline), and what it is worth.
fn mid_stream(op: FileOp, mut failure: Failure, output: &End, written: Option<u64>) -> Failure {
    if output.is_stream() && written != Some(0) {
        let how_much = match written {
            Some(written) => format!("received {written} bytes"),
            None => "may have received some bytes".to_string(),
        };
        let got = match op {
            FileOp::Decrypt | FileOp::Verify => format!(
                "{} {how_much} of plaintext before the failure (of a ringcrypt file, only \
                 chunks whose tags verified); the rest is missing: treat what it got as \
                 incomplete",
                output.name().display()
            ),
            FileOp::Encrypt | FileOp::Rewrap => format!(
                "{} {how_much} before the failure; they do not form a complete file and will \
                 not decrypt: discard them",
                output.name().display()
            ),
        };
        failure.hint = Some(got);
    }
    failure.exit = EXIT_FAILED;
    failure
}

/// Runs a job with a stream end through the daemon: both ends passed as descriptors
/// (`"fds": true`), the daemon streaming them; a named output linked here after `done`.
pub(super) fn run_daemon(cli: &Cli, cmd: &FileCmd, ends: Ends) -> Result<(), Failure> {
    daemon_settings(cmd.format, cmd.chunk_log2)?;
    if cmd.op == FileOp::Verify {
        return Err(super::verify_writes_nothing());
    }
    if cli.json && ends.output == End::Stdout {
        return Err(usage(
            "--json prints replies on standard output, which carries the data here",
            "pass -o FILE, or leave out --json",
        ));
    }
    refuse_early(cmd, &ends)?;
    let cwd = current_dir()?;
    let label = |end: &End| match end {
        End::Stdin => Ok(PathBuf::from("/dev/stdin")),
        End::Stdout => Ok(PathBuf::from("/dev/stdout")),
        End::Stream(path) | End::File(path) => wire_path(&cwd, path),
    };
    let mut spec = FileJobSpec::new(cmd.op, label(&ends.input)?, label(&ends.output)?);
    spec.key = cmd.key.clone();
    spec.overwrite = cmd.force;
    spec.fds = true;
    let json = cli.json;
    let bar = !json && !cmd.tree.quiet && std::io::stderr().is_terminal();
    spec.progress = bar;
    let request = Request::File(spec);
    let mut client = Client::connect(&cli.socket)?;
    let Opened { input, mut output } = ends.open(cmd.force)?;
    let (input, feeder) = Feeder::start(input)?;
    let relay = Relay::start(&mut output)?;
    let mut display = ProgressDisplay::new(!bar);
    let errored = std::cell::Cell::new(false);
    let reply = {
        let out_fd = match &relay {
            Some(relay) => relay.writer.as_fd(),
            None => match &output {
                Output::Stream(file) => file.as_fd(),
                Output::File(atomic) => atomic.file_ref().as_fd(),
            },
        };
        client.request_passing(&request, &[input.as_fd(), out_fd], |line, reply| {
            errored.set(matches!(reply, ReplyLine::Error(_)));
            if json {
                shown_print::raw_line(line);
            } else if let ReplyLine::Progress(progress) = reply {
                display.update(&snapshot_from(progress));
            }
        })
    };
    display.finish();
    drop(input);
    if let Some(feeder) = feeder {
        // Ends with the job: the daemon's copy of the pipe is closed, so a write the job no
        // longer wanted fails with `EPIPE` instead of blocking.
        let _ = feeder.join();
    }
    let relayed = relay.map(Relay::finish).transpose()?;
    let closed = match &output {
        Output::Stream(file) => reader_gone(file.as_fd()),
        Output::File(_) => false,
    };
    let reply = match reply {
        Ok(reply) => reply,
        // The consumer stopped reading: what it wanted, it has.
        Err(_) if closed => return Err(quiet()),
        Err(err) => {
            let failure = Failure::from(err);
            let failure = mid_stream(cmd.op, failure, &ends.output, relayed);
            return Err(failure.shown(json && errored.get()));
        }
    };
    if let Output::File(atomic) = output {
        atomic.commit(STREAM_OUTPUT_MODE, cmd.force, Durability::Fsync)?;
        if !json {
            let shown = Shown {
                verb: shown_print::verb(cmd.op),
                input: ends.input.name(),
                output: ends.output.name(),
            };
            shown_print::reply(&request, Some(&shown), client.socket(), &reply)?;
        }
    }
    Ok(())
}

/// Whether the reader of a pipe we write to went away (`POLLERR` on its write end).
fn reader_gone(fd: BorrowedFd<'_>) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(&fd, PollFlags::OUT)];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    rustix::event::poll(&mut fds, Some(&now)).is_ok() && fds[0].revents().contains(PollFlags::ERR)
}

/// A pipe this process fills from a regular file on standard input that was already partly
/// read (`(head -c 100 >/dev/null; ringcrypt encrypt - -o x) < FILE`): the daemon reads a
/// passed regular file from its start, where offline reads it from where it stands, so the
/// rest of the file goes through a pipe and both read the same bytes.
struct Feeder;

/// A thread copying one end to the other; the bytes copied.
type Copier = std::thread::JoinHandle<std::io::Result<u64>>;

impl Feeder {
    /// The descriptor to pass for `input`, and the copier when it needs one.
    fn start(input: File) -> Result<(File, Option<Copier>), Failure> {
        use std::io::{Seek, SeekFrom};
        let regular = input.metadata().is_ok_and(|m| m.file_type().is_file());
        let mut input = input;
        let at = if regular {
            input.stream_position().unwrap_or(0)
        } else {
            0
        };
        if at == 0 {
            return Ok((input, None));
        }
        let io = |e: std::io::Error| {
            Failure::from(Error::new(
                Code::IoError,
                format!("cannot feed standard input from byte {at}: {e}"),
            ))
        };
        input.seek(SeekFrom::Start(at)).map_err(io)?;
        let (reader, mut writer) = std::io::pipe().map_err(io)?;
        let copier = std::thread::spawn(move || std::io::copy(&mut input, &mut writer));
        Ok((File::from(OwnedFd::from(reader)), Some(copier)))
    }
}

/// A pipe the daemon writes into and this process copies to an output that cannot be
/// passed: a regular file on standard output (`> FILE`), or a named temp file.
struct Relay {
    writer: OwnedFd,
    copier: Copier,
}

impl Relay {
    /// A relay for `output` if it needs one.
    fn start(output: &mut Output) -> Result<Option<Relay>, Failure> {
        let target = match output {
            Output::File(atomic) if atomic.is_unnamed() => return Ok(None),
            Output::File(atomic) => atomic.file_ref().try_clone(),
            Output::Stream(file) => {
                let kind = file.metadata().map(|m| m.file_type());
                if kind.is_ok_and(|k| k.is_fifo() || k.is_socket() || k.is_char_device()) {
                    return Ok(None);
                }
                file.try_clone()
            }
        };
        let io = |e: std::io::Error| {
            Failure::from(Error::new(
                Code::IoError,
                format!("cannot relay the output: {e}"),
            ))
        };
        let mut target = target.map_err(io)?;
        let (mut reader, writer) = std::io::pipe().map_err(io)?;
        let copier = std::thread::spawn(move || std::io::copy(&mut reader, &mut target));
        Ok(Some(Relay {
            writer: writer.into(),
            copier,
        }))
    }

    /// Closes the daemon's end (ours: the daemon closed its copy with the job) and waits for
    /// the copy; the bytes copied.
    fn finish(self) -> Result<u64, Failure> {
        drop(self.writer);
        match self.copier.join() {
            Ok(Ok(copied)) => Ok(copied),
            Ok(Err(e)) => {
                Err(Error::new(Code::IoError, format!("cannot write the output: {e}")).into())
            }
            Err(_) => Err(Error::new(Code::Internal, "the output's copier panicked").into()),
        }
    }
}
