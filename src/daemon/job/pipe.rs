//! A file job with a stream end: the caller passed a pipe (or a socket, or a character
//! device) as its input, its output or both (`"fds": true`). A stream has no size and no
//! offsets, so the job runs it in order instead of in batches at offsets:
//!
//! ```text
//! [read header] ▸ (fill a lane ▸ crypto ▸ write the lane, looping on short writes)* ▸ EOF
//!   ▸ final record ▸ [fsync ▸ done: the caller links a named output] or done (a stream)
//! ```
//!
//! Reads fill a lane's pool buffer with as many short reads as the stream gives, until the
//! lane is full or a read returns 0 (end of file); only then is the plaintext length known,
//! and the final record sealed. A sealed input's final record can be a whole record long, so
//! a decrypt holds the last record of each full lane back (`carry`) until the next read says
//! whether more follows. A lane is written only after all its records verified, so a consumer
//! of a decrypt never receives a byte whose tag did not verify. While one lane is written the
//! next is read, through the shard's reactor: a stalled stream parks its op and the shard
//! goes on serving. A failure or a cancel cancels the ops still waiting on a stream.
//!
//! What this room does not do: the offset-based batches (`stream.rs`), the openssl format
//! (refused here: nothing of it is authenticated before its end, so nothing could be
//! streamed out early), or linking (the caller links a named output after `done`).

use std::collections::VecDeque;

use super::*;
use crate::daemon::reactor::STREAM;

/// The crypto of a stream job, once it is known. Its size does not matter: the whole run
/// is boxed in the job, once per job.
#[allow(clippy::large_enum_variant)]
enum Crypto {
    /// Waiting for the input's header (decrypt, rewrap).
    Header,
    Seal(Sealer),
    Open(Opener),
    Reseal(Opener, Sealer),
}

/// The lane being filled: bytes filled so far (for sealing, of its slot `slot`).
#[derive(Clone, Copy)]
struct Fill {
    lane: usize,
    slot: usize,
    filled: usize,
}

/// A lane whose bytes `at..end` are ready to be written, in order.
#[derive(Clone, Copy)]
struct Pending {
    lane: usize,
    at: usize,
    end: usize,
}

/// The state of a stream job. See the module docs.
pub(super) struct PipeRun {
    in_stream: bool,
    out_stream: bool,
    in_pos: u64,
    out_pos: u64,
    crypto: Crypto,
    chunk: usize,
    stride: usize,
    fill: Option<Fill>,
    reading: bool,
    eof: bool,
    queue: VecDeque<Pending>,
    writing: bool,
    free: Vec<usize>,
    /// A decrypt's held-back record, put at the front of the next lane.
    carry: Vec<u8>,
    /// Bytes written to a stream output so far, for the message of a failure.
    streamed: u64,
    /// The input failed (a record that did not verify, a read error): no more reads, and
    /// the job fails with this once the lanes before it, all verified, are written.
    failed: Option<Error>,
}

impl FileJob {
    /// Starts a job with a stream end (`in_stream`: the input is one; else the output is).
    pub(super) fn start_pipe(&mut self, ctx: &mut JobCtx, in_stream: bool) -> Result<(), Error> {
        let mut run = PipeRun {
            in_stream,
            out_stream: self.stream_out,
            in_pos: 0,
            out_pos: 0,
            crypto: Crypto::Header,
            chunk: 0,
            stride: 0,
            fill: None,
            reading: false,
            eof: false,
            queue: VecDeque::new(),
            writing: false,
            free: (1..self.lanes.len()).rev().collect(),
            carry: Vec::new(),
            streamed: 0,
            failed: None,
        };
        match self.spec.op {
            FileOp::Encrypt => {
                let sealer = self.sealer(ctx)?;
                run.set_chunk(sealer.header().chunk_log2);
                self.check_fits(ctx, ctx.chunk_log2)?;
                let header = sealer.header().to_bytes();
                ctx.reactor.buf_mut(self.lanes[0].buf)[..HEADER_BYTES].copy_from_slice(&header);
                run.queue.push_back(Pending {
                    lane: 0,
                    at: 0,
                    end: HEADER_BYTES,
                });
                run.crypto = Crypto::Seal(sealer);
            }
            FileOp::Decrypt | FileOp::Rewrap => {
                run.fill = Some(Fill {
                    lane: 0,
                    slot: 0,
                    filled: 0,
                });
            }
            FileOp::Verify => {
                return Err(Error::new(
                    Code::BadRequest,
                    "verify writes nothing; pass the file by path",
                ));
            }
        }
        self.pipe = Some(Box::new(run));
        self.pump_pipe(ctx)
    }

    /// Whether the job streams (a stream end): SIGTERM cancels it at once, as it has no end
    /// the daemon could wait for.
    pub fn is_stream(&self) -> bool {
        self.pipe.is_some()
    }

    /// A failed or cancelled stream job: its ops waiting on a stream are cancelled, so it
    /// can finish.
    pub(super) fn abort_pipe(&mut self, ctx: &mut JobCtx) {
        let (Some(run), Ok(files)) = (&self.pipe, self.open_files()) else {
            return;
        };
        if run.in_stream {
            ctx.reactor.cancel_on(files.input);
        }
        if let (true, Some(out)) = (run.out_stream, files.temp) {
            ctx.reactor.cancel_on(out);
        }
    }

    /// A completion of a stream job's read or write.
    pub(super) fn pipe_complete(
        &mut self,
        ctx: &mut JobCtx,
        step: Step,
        result: io::Result<u32>,
    ) -> Result<(), Error> {
        let Some(mut run) = self.pipe.take() else {
            return Err(self.out_of_order());
        };
        let outcome = match step {
            // What was read before the failure verified: it is written first, so the
            // consumer gets every verified chunk up to the bad one, as offline.
            Step::LaneRead(_) => match self.pipe_read(ctx, &mut run, result) {
                Err(err) if !run.queue.is_empty() => {
                    run.failed = Some(err);
                    Ok(())
                }
                other => other,
            },
            Step::LaneWrite(_) => self.pipe_written(ctx, &mut run, result),
            _ => Err(self.out_of_order()),
        };
        self.pipe = Some(run);
        outcome.and_then(|()| self.pump_pipe(ctx))
    }

    fn pipe_read(
        &mut self,
        ctx: &mut JobCtx,
        run: &mut PipeRun,
        result: io::Result<u32>,
    ) -> Result<(), Error> {
        run.reading = false;
        let n = result.map_err(|e| self.io_err("read", true, e))? as usize;
        let Some(mut fill) = run.fill else {
            return Err(self.out_of_order());
        };
        if n == 0 {
            run.eof = true;
            run.fill = None;
            return self.pipe_final(ctx, run, fill);
        }
        ctx.metrics.read(n as u64);
        self.bytes_in += n as u64;
        run.in_pos += n as u64;
        fill.filled += n;
        let buf = self.lanes[fill.lane].buf;
        let lane = fill.lane;
        run.fill = Some(fill);
        match &mut run.crypto {
            Crypto::Header if fill.filled == HEADER_BYTES => {
                run.fill = None;
                let mut head = [0u8; HEADER_BYTES];
                head.copy_from_slice(&ctx.reactor.buf_mut(buf)[..HEADER_BYTES]);
                self.pipe_header(ctx, run, &head)?;
            }
            Crypto::Seal(sealer) if fill.filled == run.chunk => {
                fill.slot += 1;
                fill.filled = 0;
                run.fill = Some(fill);
                if fill.slot == LANES {
                    run.fill = None;
                    let len = LANES * run.stride;
                    sealer.seal_full(&mut ctx.reactor.buf_mut(buf)[..len])?;
                    run.queue.push_back(Pending {
                        lane,
                        at: 0,
                        end: len,
                    });
                }
            }
            Crypto::Open(_) | Crypto::Reseal(..) if fill.filled == LANES * run.stride => {
                // The last record may be the final one: held back until the next read.
                run.fill = None;
                let held = (LANES - 1) * run.stride;
                let bytes = ctx.reactor.buf_mut(buf);
                run.carry.clear();
                run.carry.extend_from_slice(&bytes[held..held + run.stride]);
                let end = self.pipe_open(run, bytes, LANES - 1, None)?;
                run.queue.push_back(Pending { lane, at: 0, end });
            }
            _ => {}
        }
        Ok(())
    }

    /// The input's header: the crypto of the rest, and for a rewrap the new header.
    fn pipe_header(
        &mut self,
        ctx: &mut JobCtx,
        run: &mut PipeRun,
        head: &[u8],
    ) -> Result<(), Error> {
        let in_file = |e: Error| e.context(self.spec.input.display());
        if head.starts_with(crate::crypto::openssl::MAGIC) {
            return Err(in_file(Error::new(
                Code::BadFormat,
                "an openssl-format file is not streamed through the daemon (its length is \
                 not authenticated, so nothing could be written before the end): decrypt it \
                 from a file to a file, or offline with --keys FILE",
            )));
        }
        let header = Header::parse(head).map_err(in_file)?;
        let master = ctx.ring.opening_key(&header.key_id).map_err(in_file)?;
        let opener = Opener::new(&header, master.bytes()).map_err(|e| in_file(e.into()))?;
        self.check_fits(ctx, header.chunk_log2)?;
        run.set_chunk(header.chunk_log2);
        run.crypto = match self.spec.op {
            FileOp::Rewrap => {
                let sealer = resealer(ctx, header.chunk_log2)?;
                let bytes = ctx.reactor.buf_mut(self.lanes[0].buf);
                bytes[..HEADER_BYTES].copy_from_slice(&sealer.header().to_bytes());
                run.queue.push_back(Pending {
                    lane: 0,
                    at: 0,
                    end: HEADER_BYTES,
                });
                Crypto::Reseal(opener, sealer)
            }
            _ => {
                run.free.push(0);
                Crypto::Open(opener)
            }
        };
        Ok(())
    }

    /// End of file in the lane being filled: the final record.
    fn pipe_final(&mut self, ctx: &mut JobCtx, run: &mut PipeRun, fill: Fill) -> Result<(), Error> {
        let buf = self.lanes[fill.lane].buf;
        let (lane, stride) = (fill.lane, run.stride);
        let end = match &mut run.crypto {
            Crypto::Header => {
                return Err(Error::new(
                    Code::BadFormat,
                    format!(
                        "the input ended after {} bytes, inside the {HEADER_BYTES}-byte header: \
                         not a ringcrypt file",
                        fill.filled
                    ),
                )
                .context(self.spec.input.display()));
            }
            Crypto::Seal(sealer) => {
                let bytes = ctx.reactor.buf_mut(buf);
                let full = fill.slot * stride;
                sealer.seal_full(&mut bytes[..full])?;
                full + sealer.seal_final(&mut bytes[full..], fill.filled)?
            }
            Crypto::Open(_) | Crypto::Reseal(..) => {
                // The last record is the final one; none at all means the input was cut.
                if fill.filled == 0 {
                    return Err(Error::from(format::AuthFailed).context(self.spec.input.display()));
                }
                let full = (fill.filled - 1) / stride;
                let bytes = ctx.reactor.buf_mut(buf);
                self.pipe_open(run, bytes, full, Some(fill.filled))?
            }
        };
        if end > 0 {
            run.queue.push_back(Pending { lane, at: 0, end });
        } else {
            run.free.push(lane);
        }
        Ok(())
    }

    /// Opens `full` whole records at the front of `bytes` and, with `last` (the end of the
    /// filled bytes), the final record after them; the plaintext is moved to the front (a
    /// decrypt) or sealed again where it lies (a rewrap). Returns the bytes to write.
    fn pipe_open(
        &self,
        run: &mut PipeRun,
        bytes: &mut [u8],
        full: usize,
        last: Option<usize>,
    ) -> Result<usize, Error> {
        let (chunk, stride) = (run.chunk, run.stride);
        let auth = |_| Error::from(format::AuthFailed).context(self.spec.input.display());
        let opener = match &mut run.crypto {
            Crypto::Open(opener) | Crypto::Reseal(opener, _) => opener,
            _ => return Err(self.out_of_order()),
        };
        opener
            .open_full(&mut bytes[..full * stride])
            .map_err(auth)?;
        let plain = match last {
            Some(end) => Some(
                opener
                    .open_final(&mut bytes[full * stride..end])
                    .map_err(auth)?,
            ),
            None => None,
        };
        if let Crypto::Reseal(_, sealer) = &mut run.crypto {
            sealer.seal_full(&mut bytes[..full * stride])?;
            let sealed = match plain {
                Some(plain) => sealer.seal_final(&mut bytes[full * stride..], plain)?,
                None => 0,
            };
            return Ok(full * stride + sealed);
        }
        for record in 1..full {
            bytes.copy_within(record * stride..record * stride + chunk, record * chunk);
        }
        let plain = plain.unwrap_or(0);
        bytes.copy_within(full * stride..full * stride + plain, full * chunk);
        Ok(full * chunk + plain)
    }

    fn pipe_written(
        &mut self,
        ctx: &mut JobCtx,
        run: &mut PipeRun,
        result: io::Result<u32>,
    ) -> Result<(), Error> {
        run.writing = false;
        let n = match result {
            Ok(0) => Err(self.io_err("write", false, io::Error::from(io::ErrorKind::WriteZero))),
            Ok(n) => Ok(n as usize),
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => Err(Error::new(
                Code::IoError,
                format!(
                    "{}: the reader of the output went away (broken pipe) after {} bytes",
                    self.spec.output.display(),
                    run.streamed
                ),
            )),
            Err(e) => Err(self.io_err("write", false, e)),
        }?;
        ctx.metrics.written(n as u64);
        self.bytes_out += n as u64;
        run.out_pos += n as u64;
        if run.out_stream {
            run.streamed += n as u64;
        }
        let Some(front) = run.queue.front_mut() else {
            return Err(self.out_of_order());
        };
        // A stream may take part of a write: the rest goes next.
        front.at += n;
        if front.at == front.end {
            run.free.push(front.lane);
            run.queue.pop_front();
        }
        Ok(())
    }

    /// Issues the next write and the next read, if each is due; past the end of the input
    /// and the last write, finishes the job.
    fn pump_pipe(&mut self, ctx: &mut JobCtx) -> Result<(), Error> {
        let Some(mut run) = self.pipe.take() else {
            return Err(self.out_of_order());
        };
        let outcome = self.pump_with(ctx, &mut run);
        if run.failed.is_some() && run.queue.is_empty() && !run.writing {
            let failed = run.failed.take();
            self.pipe = Some(run);
            return Err(failed.unwrap_or_else(|| self.out_of_order()));
        }
        let finished = run.failed.is_none()
            && run.eof
            && run.fill.is_none()
            && run.queue.is_empty()
            && !run.writing
            && !run.reading;
        let out_stream = run.out_stream;
        self.pipe = Some(run);
        outcome?;
        if finished {
            if out_stream {
                let files = self.open_files()?;
                self.stage = Stage::Committing(files);
                self.finish(ctx);
                return Ok(());
            }
            return self.commit(ctx);
        }
        Ok(())
    }

    fn pump_with(&mut self, ctx: &mut JobCtx, run: &mut PipeRun) -> Result<(), Error> {
        let files = self.open_files()?;
        if !run.writing
            && let Some(next) = run.queue.front()
        {
            let temp = self.temp()?;
            let offset = if run.out_stream { STREAM } else { run.out_pos };
            let op = Op::WriteFixed {
                fd: temp,
                buf: self.lanes[next.lane].buf,
                at: next.at,
                len: next.end - next.at,
                offset,
            };
            run.writing = true;
            self.push(ctx, Step::LaneWrite(next.lane as u8), op);
        }
        if run.reading || run.eof || run.failed.is_some() {
            return Ok(());
        }
        if run.fill.is_none()
            && let Some(lane) = run.free.pop()
        {
            let filled = run.carry.len();
            if filled > 0 {
                ctx.reactor.buf_mut(self.lanes[lane].buf)[..filled].copy_from_slice(&run.carry);
                run.carry.clear();
            }
            run.fill = Some(Fill {
                lane,
                slot: 0,
                filled,
            });
        }
        let Some(fill) = run.fill else {
            return Ok(());
        };
        let (at, len) = match run.crypto {
            Crypto::Header => (fill.filled, HEADER_BYTES - fill.filled),
            Crypto::Seal(_) => (
                fill.slot * run.stride + fill.filled,
                run.chunk - fill.filled,
            ),
            Crypto::Open(_) | Crypto::Reseal(..) => (fill.filled, LANES * run.stride - fill.filled),
        };
        let offset = if run.in_stream { STREAM } else { run.in_pos };
        let op = Op::ReadFixed {
            fd: files.input,
            buf: self.lanes[fill.lane].buf,
            at,
            len,
            offset,
        };
        run.reading = true;
        self.push(ctx, Step::LaneRead(fill.lane as u8), op);
        ctx.reactor.submit();
        Ok(())
    }
}

impl PipeRun {
    pub(super) fn in_stream(&self) -> bool {
        self.in_stream
    }

    fn set_chunk(&mut self, chunk_log2: u8) {
        self.chunk = 1 << chunk_log2;
        self.stride = self.chunk + TAG_BYTES;
    }
}
