//! A file job's byte stream: the header, then batches of chunks read into the pool
//! buffers, sealed or opened in place eight lanes at a time, and written out, with the next
//! batch's reads in flight while one is being sealed.
//!
//! What this room does not do: open, create, link or fsync anything (the job's steps in
//! `mod.rs` do).

use super::*;

impl FileJob {
    /// A new file's sealer, with the key the request names (or the ring's default).
    /// (A rewrap's is [`resealer`]'s.)
    pub(super) fn sealer(&self, ctx: &JobCtx) -> Result<Sealer, Error> {
        let entry = ctx.ring.sealing_entry(self.spec.key.as_deref())?;
        let KeyMaterial::Secret(master) = &entry.material else {
            return Err(Error::new(
                Code::BadRequest,
                format!(
                    "key {:?} is a passphrase; the daemon seals the ringcrypt format only",
                    entry.name
                ),
            ));
        };
        Ok(Sealer::new(
            master.bytes(),
            ctx.chunk_log2,
            format::random_salt()?,
        ))
    }

    pub(super) fn start_sealing(
        &mut self,
        ctx: &mut JobCtx,
        sealer: Sealer,
        plain_len: u64,
    ) -> Result<(), Error> {
        let chunk_log2 = sealer.header().chunk_log2;
        self.check_fits(ctx, chunk_log2)?;
        let header = sealer.header().to_bytes();
        self.codec = Some(Codec::Seal {
            sealer,
            n_full: plain_len >> chunk_log2,
            final_len: (plain_len & ((1 << chunk_log2) - 1)) as usize,
        });
        self.choose_io(ctx)?;
        self.maybe_split(ctx)?;
        // A file sealed in one batch (every small file) writes its header with that batch,
        // from the same buffer: one write, so one hand-off to an io worker on file systems
        // that punt buffered writes (tmpfs), instead of two in a row.
        self.inline_header = self.direct.is_none()
            && self.split.is_none()
            && self.part_of.is_none()
            && self.end_batch == 1
            && format::sealed_len(plain_len, chunk_log2) <= ctx.reactor.buf_bytes() as u64;
        if self.inline_header {
            self.pump(ctx);
            return Ok(());
        }
        self.write_header(ctx, &header)
    }

    /// Writes the header from the first pool buffer: no batch starts before it is written.
    pub(super) fn write_header(
        &mut self,
        ctx: &mut JobCtx,
        header: &[u8; HEADER_BYTES],
    ) -> Result<(), Error> {
        let fd = self.temp()?;
        let buf = self.lanes[0].buf;
        ctx.reactor.buf_mut(buf)[..HEADER_BYTES].copy_from_slice(header);
        self.bytes_out += HEADER_BYTES as u64;
        self.push(
            ctx,
            Step::HeaderWrite,
            Op::WriteFixed {
                fd,
                buf,
                at: 0,
                len: HEADER_BYTES,
                offset: 0,
            },
        );
        Ok(())
    }

    pub(super) fn check_fits(&self, ctx: &JobCtx, chunk_log2: u8) -> Result<(), Error> {
        if pool_buf_bytes(chunk_log2) > ctx.reactor.buf_bytes() {
            return Err(Error::new(
                Code::BadFormat,
                format!(
                    "{}: chunks of 2^{chunk_log2} bytes are larger than this daemon's buffers; \
                     decrypt it offline with `ringcrypt --keys FILE decrypt`",
                    self.spec.input.display()
                ),
            ));
        }
        Ok(())
    }

    pub(super) fn got_header(&mut self, ctx: &mut JobCtx, head: &[u8]) -> Result<(), Error> {
        let in_file = |e: Error| e.context(self.spec.input.display());
        if head.starts_with(crate::crypto::openssl::MAGIC) {
            return self.got_openssl(ctx, head);
        }
        let header = Header::parse(head).map_err(in_file)?;
        let master = ctx.ring.opening_key(&header.key_id).map_err(in_file)?;
        let opener = Opener::new(&header, master.bytes()).map_err(|e| in_file(e.into()))?;
        let layout =
            Layout::for_file(self.in_len, header.chunk_log2).map_err(|e| in_file(e.into()))?;
        self.check_fits(ctx, header.chunk_log2)?;
        self.bytes_in += HEADER_BYTES as u64;
        let (full_records, final_record) = (layout.full_records, layout.final_record_bytes);
        match self.spec.op {
            FileOp::Verify | FileOp::Decrypt => {
                self.codec = Some(if self.spec.op == FileOp::Verify {
                    Codec::Check {
                        opener,
                        full_records,
                        final_record,
                    }
                } else {
                    Codec::Open {
                        opener,
                        full_records,
                        final_record,
                    }
                });
                self.choose_io(ctx)?;
                self.maybe_split(ctx)?;
                self.pump(ctx);
            }
            FileOp::Rewrap => {
                let sealer = resealer(ctx, header.chunk_log2)?;
                let new_header = sealer.header().to_bytes();
                self.codec = Some(Codec::Reseal {
                    opener,
                    sealer,
                    full_records,
                    final_record,
                });
                self.maybe_split(ctx)?;
                self.write_header(ctx, &new_header)?;
            }
            FileOp::Encrypt => unreachable!("encrypt does not read a header"),
        }
        Ok(())
    }

    /// Issues reads for idle lanes and processes ready batches in order.
    pub(super) fn pump(&mut self, ctx: &mut JobCtx) {
        if self.codec.is_none() {
            return;
        }
        let batches = self.end_batch;
        loop {
            for lane in 0..self.lanes.len() {
                if self.lanes[lane].state == LaneState::Idle && self.next_read < batches {
                    let batch = self.next_read;
                    self.next_read += 1;
                    if let Err(err) = self.issue_reads(ctx, lane, batch) {
                        self.fail(ctx, err);
                        return;
                    }
                }
            }
            // A batch with nothing to write (every batch of a verify) frees its lane at
            // once. When reads completed out of order, one pass can free every lane with no
            // op left in flight to call `pump` again: read the next batches now.
            match self.process_ready(ctx) {
                Ok(true) if self.next_read < batches => continue,
                Ok(_) => break,
                Err(err) => {
                    self.fail(ctx, err);
                    return;
                }
            }
        }
        let all_idle = self.lanes.iter().all(|lane| lane.state == LaneState::Idle);
        if self.next_process == batches && all_idle && matches!(self.stage, Stage::Streaming(_)) {
            self.end_of_stream(ctx);
        }
    }

    pub(super) fn issue_reads(
        &mut self,
        ctx: &mut JobCtx,
        lane: usize,
        batch: u64,
    ) -> Result<(), Error> {
        let fd = match self.direct {
            Some(direct) => direct.input,
            None => self.open_files()?.input,
        };
        let Some(codec) = &self.codec else {
            return Err(self.out_of_order());
        };
        let (first, units) = codec.span(batch);
        let stride = codec.stride();
        let chunk = codec.chunk_bytes() as u64;
        let buf = self.lanes[lane].buf;
        let mut reads = Spans::new();
        let direct_expected = self
            .direct
            .is_some()
            .then(|| self.direct_reads(codec, batch, &mut reads));
        // A sealed input's batch is one read of its records, wherever they lie.
        match (codec, codec.records_at(batch)) {
            _ if direct_expected.is_some() => {}
            (_, Some((offset, len))) => reads.push((0, len, offset)),
            (
                Codec::Seal {
                    n_full, final_len, ..
                },
                None,
            ) => {
                let base = if self.inline_header { HEADER_BYTES } else { 0 };
                for slot in 0..units {
                    let index = first + slot as u64;
                    let len = if index < *n_full {
                        chunk as usize
                    } else {
                        *final_len
                    };
                    if len > 0 {
                        reads.push((base + slot * stride, len, index * chunk));
                    }
                }
            }
            (
                Codec::Legacy {
                    n_full, final_ct, ..
                },
                None,
            ) => {
                for slot in 0..units {
                    let index = first + slot as u64;
                    let len = if index < *n_full {
                        chunk as usize
                    } else {
                        *final_ct
                    };
                    let at = crate::crypto::openssl::BODY_OFFSET + index * chunk;
                    reads.push((slot * stride, len, at));
                }
            }
            // Codecs of records always have them.
            (Codec::Open { .. } | Codec::Check { .. } | Codec::Reseal { .. }, None) => {
                return Err(self.out_of_order());
            }
        }
        let tag = Step::LaneRead(lane as u8);
        self.lanes[lane] = Lane {
            buf,
            batch,
            ops_left: reads.len as u32,
            expected: 0,
            done: 0,
            state: LaneState::Reading,
        };
        if reads.len == 0 {
            self.lanes[lane].state = LaneState::Ready;
        }
        self.lanes[lane].expected =
            direct_expected.unwrap_or_else(|| reads.as_slice().iter().map(|r| r.1).sum());
        // The reads of one batch fill disjoint spans of the lane's buffer.
        for &(at, len, offset) in reads.as_slice() {
            self.push(
                ctx,
                tag,
                Op::ReadFixed {
                    fd,
                    buf,
                    at,
                    len,
                    offset,
                },
            );
        }
        Ok(())
    }

    pub(super) fn lane_read(
        &mut self,
        ctx: &mut JobCtx,
        lane: usize,
        result: io::Result<u32>,
    ) -> Result<(), Error> {
        let n = result.map_err(|e| self.io_err("read", true, e))?;
        let counted = self.read_counted(lane, n);
        self.bytes_in += counted;
        ctx.metrics.read(counted);
        if let Some(part) = &self.part_of {
            part.progress.add(counted, 0);
        }
        let state = &mut self.lanes[lane];
        state.ops_left -= 1;
        state.done += n as usize;
        if state.ops_left == 0 {
            if state.done != state.expected {
                return Err(self.changed_size());
            }
            state.state = LaneState::Ready;
        }
        self.pump(ctx);
        Ok(())
    }

    /// Runs the crypto of every ready lane whose batch is next, then submits its writes;
    /// true when a batch had nothing to write, so its lane is idle again already.
    pub(super) fn process_ready(&mut self, ctx: &mut JobCtx) -> Result<bool, Error> {
        let mut freed = false;
        loop {
            let Some(lane) = self
                .lanes
                .iter()
                .position(|l| l.state == LaneState::Ready && l.batch == self.next_process)
            else {
                return Ok(freed);
            };
            let batch = self.next_process;
            self.next_process += 1;
            let started = Instant::now();
            let writes = if self.direct.is_some() {
                self.direct_crypto(ctx, lane, batch)?
            } else {
                self.crypto(ctx, lane, batch)?
            };
            ctx.metrics.crypto(started.elapsed());
            let buf = self.lanes[lane].buf;
            self.lanes[lane].state = LaneState::Writing;
            self.lanes[lane].ops_left = writes.len as u32;
            if writes.len == 0 {
                // Nothing to write (an empty final chunk, or a verify): the lane is free.
                self.lanes[lane].state = LaneState::Idle;
                freed = true;
                continue;
            }
            let temp = self.temp()?;
            let direct_out = self.direct.and_then(|direct| direct.out);
            self.lanes[lane].expected = writes.as_slice().iter().map(|w| w.1).sum();
            self.lanes[lane].done = 0;
            for &(at, len, offset) in writes.as_slice() {
                // A direct job's whole blocks go by DMA, its partial ones through the page
                // cache (see `direct.rs`).
                let fd = match direct_out {
                    Some(out) if direct::aligned(&(at, len, offset)) => out,
                    _ => temp,
                };
                self.bytes_out += len as u64;
                if let Some(part) = &self.part_of {
                    part.progress.add(0, len as u64);
                }
                self.push(
                    ctx,
                    Step::LaneWrite(lane as u8),
                    Op::WriteFixed {
                        fd,
                        buf,
                        at,
                        len,
                        offset,
                    },
                );
            }
            // Hand the writes (and any reads queued before) to the kernel now, so IO runs
            // while the next batch's crypto does.
            ctx.reactor.submit();
        }
    }

    /// The crypto of one batch, in place; returns the writes (buffer span, file offset).
    pub(super) fn crypto(
        &mut self,
        ctx: &mut JobCtx,
        lane: usize,
        batch: u64,
    ) -> Result<Spans, Error> {
        let buf_id = self.lanes[lane].buf;
        let Some(codec) = self.codec.as_mut() else {
            return Err(self.out_of_order());
        };
        let (first, units) = codec.span(batch);
        let full = codec.full_in(first, units);
        let stride = codec.stride();
        let chunk = codec.chunk_bytes();
        let auth = |_| Error::from(format::AuthFailed).context(self.spec.input.display());
        let buf = ctx.reactor.buf_mut(buf_id);
        let mut writes = Spans::new();
        match codec {
            Codec::Seal {
                sealer, final_len, ..
            } => {
                // With the header inline, the records sit after it in the buffer.
                let base = if self.inline_header { HEADER_BYTES } else { 0 };
                let records = &mut buf[base..];
                sealer.seal_full(&mut records[..full * stride])?;
                let mut len = full * stride;
                if full < units {
                    len += sealer.seal_final(&mut records[full * stride..], *final_len)?;
                }
                if self.inline_header {
                    buf[..HEADER_BYTES].copy_from_slice(&sealer.header().to_bytes());
                }
                writes.push((
                    0,
                    base + len,
                    (HEADER_BYTES - base) as u64 + first * stride as u64,
                ));
            }
            Codec::Open {
                opener,
                final_record,
                ..
            } => {
                opener.open_full(&mut buf[..full * stride]).map_err(auth)?;
                for slot in 0..full {
                    writes.push((slot * stride, chunk, (first + slot as u64) * chunk as u64));
                }
                if full < units {
                    let at = full * stride;
                    let plain = opener
                        .open_final(&mut buf[at..at + *final_record])
                        .map_err(auth)?;
                    if plain > 0 {
                        writes.push((at, plain, (first + full as u64) * chunk as u64));
                    }
                }
            }
            Codec::Legacy {
                body,
                sealer,
                n_full,
                final_ct,
                ..
            } => {
                let part = legacy::Batch {
                    first,
                    units,
                    stride,
                    chunk,
                    n_full: *n_full,
                    final_ct: *final_ct,
                };
                part.run(body, sealer.as_mut(), buf, &mut writes)
                    .map_err(|e| e.context(self.spec.input.display()))?;
            }
            Codec::Check {
                opener,
                final_record,
                ..
            } => {
                // Tags only: the records stay ciphertext, and nothing is written. What the
                // job counts out is the plaintext the records hold, for the `done` reply.
                opener.check_full(&buf[..full * stride]).map_err(auth)?;
                let mut plain = full * chunk;
                if full < units {
                    let at = full * stride;
                    plain += opener
                        .check_final(&buf[at..at + *final_record])
                        .map_err(auth)?;
                }
                self.bytes_out += plain as u64;
                if let Some(part) = &self.part_of {
                    part.progress.add(0, plain as u64);
                }
            }
            Codec::Reseal {
                opener,
                sealer,
                final_record,
                ..
            } => {
                opener.open_full(&mut buf[..full * stride]).map_err(auth)?;
                sealer.seal_full(&mut buf[..full * stride])?;
                let mut len = full * stride;
                if full < units {
                    let at = full * stride;
                    let plain = opener
                        .open_final(&mut buf[at..at + *final_record])
                        .map_err(auth)?;
                    len += sealer.seal_final(&mut buf[at..], plain)?;
                }
                writes.push((0, len, HEADER_BYTES as u64 + first * stride as u64));
            }
        }
        Ok(writes)
    }

    pub(super) fn lane_written(
        &mut self,
        ctx: &mut JobCtx,
        lane: usize,
        result: io::Result<u32>,
    ) -> Result<(), Error> {
        let n = result.map_err(|e| self.io_err("write", false, e))?;
        ctx.metrics.written(u64::from(n));
        let state = &mut self.lanes[lane];
        state.ops_left -= 1;
        state.done += n as usize;
        if state.ops_left == 0 {
            if state.done != state.expected {
                // A short write to a regular file means the disk filled up.
                return Err(Error::io(
                    "write",
                    &self.spec.output,
                    io::Error::from_raw_os_error(libc::ENOSPC),
                ));
            }
            state.state = LaneState::Idle;
        }
        self.pump(ctx);
        Ok(())
    }

    pub(super) fn end_of_stream(&mut self, ctx: &mut JobCtx) {
        if self.part_of.is_some() {
            // A range of another shard's file: its writes are done; the owner commits.
            failpoint("range_written");
            return self.close_all(ctx);
        }
        if self.waits_for_ranges() {
            return;
        }
        let files = match self.open_files() {
            Ok(files) => files,
            Err(err) => return self.fail(ctx, err),
        };
        self.stage = Stage::Committing(files);
        match self.spec.op {
            // The file must end exactly after the final record: probe one byte past it.
            // Into the first pool buffer: every batch is written by now.
            FileOp::Decrypt | FileOp::Rewrap | FileOp::Verify => {
                let fd = files.input;
                let buf = self.lanes[0].buf;
                self.push(
                    ctx,
                    Step::EofProbe,
                    Op::ReadFixed {
                        fd,
                        buf,
                        at: 0,
                        len: 1,
                        offset: self.in_len,
                    },
                );
            }
            FileOp::Encrypt => {
                if let Err(err) = self.commit(ctx) {
                    self.fail(ctx, err);
                }
            }
        }
    }
}

/// A rewrap's sealer: the ring's default key, chunks of `chunk_log2`.
pub(super) fn resealer(ctx: &JobCtx, chunk_log2: u8) -> Result<Sealer, Error> {
    let entry = ctx.ring.sealing_entry(None)?;
    let KeyMaterial::Secret(master) = &entry.material else {
        return Err(Error::new(
            Code::Internal,
            "the default key is not a ringcrypt key",
        ));
    };
    Ok(Sealer::new(
        master.bytes(),
        chunk_log2,
        format::random_salt()?,
    ))
}
