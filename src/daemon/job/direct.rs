//! Direct IO (`--io direct|buffered|auto`): a file's bytes go between the disk and the pool
//! buffers by DMA, without the page cache, so no io worker copies them and a large job does
//! not evict the host's cache.
//!
//! `O_DIRECT` wants the memory, the file offset and the length of every op aligned to the
//! device's block; [`ALIGN`] (a page) serves every common device. Chunks are multiples of it,
//! but records (C + 32 bytes after a 96-byte header) are not, so a pool buffer of a direct
//! job is two aligned areas, and the crypto runs out of place between them:
//!
//! - encrypt: each plaintext chunk is read into its own aligned slot of the first area
//!   (chunk offsets are aligned), and sealed into the second, where the batch's records lie
//!   exactly as in the file, shifted by their file offset modulo [`ALIGN`]. The whole blocks
//!   go out with `O_DIRECT`; the partial block at each end of the batch goes through the
//!   ordinary (buffered) descriptor of the same file. Two batches share at most that one
//!   block, which only buffered writes touch, so direct and buffered writes never meet in
//!   a page, and no batch waits for another: a range of a split file is just batches too.
//!   The output is first preallocated to its sealed size, so no direct write extends it.
//! - decrypt and verify: an aligned window covering the batch's records is read into the
//!   first area (the blocks it shares with the next batch are read twice), and opened out of
//!   place into aligned plaintext slots of the second; plaintext offsets are chunk-aligned, so
//!   only the final chunk's partial block goes buffered.
//!
//! The input and the output each get a second descriptor, opened through `/proc/self/fd`
//! with `O_DIRECT` (a new open file description: a caller's passed descriptor keeps its
//! flags); the header, the end-of-file probe and the partial blocks use the first. Which files go direct is
//! decided once per file, before it is split ([`FileJob::choose_io`]); a refusal falls
//! back to buffered IO for that file and counts in `ringcrypt_direct_io_fallbacks_total`.
//! Rewraps and openssl-format inputs always run buffered.

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use clap::ValueEnum;
use rustix::fs::{AtFlags, OFlags, StatxFlags};
use serde::Deserialize;

use super::*;

/// Alignment of direct IO: memory, file offsets and lengths (a page; the largest logical
/// block size of common devices).
pub const ALIGN: usize = crate::daemon::reactor::BUF_ALIGN;

/// `--io`: how file data moves between the disk and the pool buffers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoMode {
    /// Direct IO for files of at least 1 MiB on file systems that take it and are not in
    /// memory (tmpfs, ramfs), buffered otherwise.
    #[default]
    Auto,
    /// Direct IO for every file whose file system takes it.
    Direct,
    /// Through the page cache, always.
    Buffered,
}

/// tmpfs and ramfs (`statfs` magic): they may take `O_DIRECT`, but their data is the page
/// cache, so direct IO saves nothing there.
const IN_MEMORY_FS: [i64; 2] = [0x0102_1994, 0x8584_58f6];

/// Bytes of a pool buffer for direct IO at chunk size 2^chunk_log2: two aligned areas, each
/// a batch of records with a block of room on either side.
pub fn direct_buf_bytes(chunk_log2: u8) -> usize {
    2 * area_bytes((1 << chunk_log2) + TAG_BYTES)
}

fn area_bytes(stride: usize) -> usize {
    (LANES * stride).next_multiple_of(ALIGN) + ALIGN
}

/// A direct job's second descriptors: its input and its output (None for verify) opened
/// again with `O_DIRECT`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Direct {
    pub(super) input: File,
    pub(super) out: Option<File>,
}

/// [`Direct`]'s descriptors on their way to another shard, for a range.
pub(super) struct DirectFds {
    pub(super) input: OwnedFd,
    pub(super) out: Option<OwnedFd>,
}

impl DirectFds {
    pub(super) fn adopt(self, reactor: &mut Reactor) -> Direct {
        Direct {
            input: reactor.adopt(self.input),
            out: self.out.map(|out| reactor.adopt(out)),
        }
    }
}

const fn down(x: u64) -> u64 {
    x & !(ALIGN as u64 - 1)
}

const fn up(x: u64) -> u64 {
    down(x + ALIGN as u64 - 1)
}

/// Whether a span may go to the `O_DIRECT` descriptor: its memory (pool buffers start
/// aligned), its length and its file offset are all block multiples.
pub(super) fn aligned(&(at, len, offset): &(usize, usize, u64)) -> bool {
    at % ALIGN == 0 && len % ALIGN == 0 && offset % ALIGN as u64 == 0
}

/// The writes of `len` bytes from buffer offset `at` to file offset `offset` (with `at` and
/// `offset` equal modulo [`ALIGN`]): the partial block in front, the whole blocks, the partial
/// block behind; [`aligned`] tells which descriptor each goes to.
fn edge_writes(at: usize, len: usize, offset: u64, writes: &mut Spans) {
    let end = offset + len as u64;
    let head_end = up(offset).min(end);
    let mid_end = down(end).max(head_end);
    for (from, to) in [(offset, head_end), (head_end, mid_end), (mid_end, end)] {
        if to > from {
            writes.push((at + (from - offset) as usize, (to - from) as usize, from));
        }
    }
}

/// `/proc/self/fd/N`, NUL-terminated, on the stack.
fn proc_fd_path<'a>(fd: BorrowedFd<'_>, out: &'a mut [u8; 32]) -> &'a CStr {
    use std::os::fd::AsRawFd;
    let prefix = b"/proc/self/fd/";
    out[..prefix.len()].copy_from_slice(prefix);
    let mut digits = [0u8; 12];
    let mut n = fd.as_raw_fd().unsigned_abs();
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for (i, digit) in digits[..len].iter().rev().enumerate() {
        out[prefix.len() + i] = *digit;
    }
    out[prefix.len() + len] = 0;
    CStr::from_bytes_with_nul(&out[..=prefix.len() + len]).expect("one NUL, at the end")
}

/// Whether the file system of `fd` is in memory (direct IO gains nothing there).
fn in_memory(fd: BorrowedFd<'_>) -> bool {
    rustix::fs::fstatfs(fd).is_ok_and(|fs| IN_MEMORY_FS.contains(&{ fs.f_type }))
}

/// Refuses a file whose direct IO this job cannot do: the kernel says it has none, or
/// wants a coarser alignment than [`ALIGN`].
fn check_dio_align(fd: BorrowedFd<'_>) -> io::Result<()> {
    if crate::failpoint::direct_io_refused() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let stx = rustix::fs::statx(fd, c"", AtFlags::EMPTY_PATH, StatxFlags::DIOALIGN)?;
    if stx.stx_mask & StatxFlags::DIOALIGN.bits() != 0
        && (stx.stx_dio_offset_align == 0
            || stx.stx_dio_offset_align as usize > ALIGN
            || stx.stx_dio_mem_align as usize > ALIGN)
    {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(())
}

/// Opens `fd`'s file again, through `/proc/self/fd`, as a new open file description with
/// `O_DIRECT` (the job's, or the caller's for passed descriptors, keeps its flags). It asks
/// for no more access than `fd` has: the input read-only, the output write-only (a passed
/// input is readable and a passed output writable, `passed.rs` checked).
fn reopen_direct(fd: BorrowedFd<'_>, access: OFlags) -> io::Result<OwnedFd> {
    check_dio_align(fd)?;
    let mut path = [0u8; 32];
    let flags = access | OFlags::DIRECT | OFlags::CLOEXEC;
    Ok(rustix::fs::open(
        proc_fd_path(fd, &mut path),
        flags,
        rustix::fs::Mode::empty(),
    )?)
}

impl FileJob {
    /// Decides, once the codec is known and before the file is split, whether this file
    /// runs with direct IO, and sets it up; a file system that refuses falls back to
    /// buffered IO for this file, counted.
    pub(super) fn choose_io(&mut self, ctx: &mut JobCtx) -> Result<(), Error> {
        let Some(codec) = &self.codec else {
            return Err(self.out_of_order());
        };
        let chunk_log2 = codec.chunk_bytes().trailing_zeros() as u8;
        let eligible = matches!(
            codec,
            Codec::Seal { .. } | Codec::Open { .. } | Codec::Check { .. }
        ) && self.part_of.is_none()
            && ctx.io != IoMode::Buffered
            && direct_buf_bytes(chunk_log2) <= ctx.reactor.buf_bytes();
        if !eligible {
            return Ok(());
        }
        let files = self.open_files()?;
        let fd = |file| {
            ctx.reactor
                .fd(file)
                .map_err(|e| self.io_err("open", true, e))
        };
        let input = fd(files.input)?;
        let temp = files.temp.map(fd).transpose()?;
        if ctx.io == IoMode::Auto
            && (self.in_len < crate::limits::DIRECT_IO_MIN_BYTES
                || in_memory(input)
                || temp.is_some_and(in_memory))
        {
            return Ok(());
        }
        let opened = reopen_direct(input, OFlags::RDONLY).and_then(|input| {
            let out = temp
                .map(|temp| reopen_direct(temp, OFlags::WRONLY))
                .transpose()?;
            Ok((input, out))
        });
        match opened {
            Ok((input, out)) => {
                if let (Some(out), Some(len)) = (&out, self.output_floor(chunk_log2)) {
                    // Allocated now, so that no direct write extends the file (ext4
                    // serializes those on the inode). Only a speed-up: a file system
                    // without fallocate just takes the slower path.
                    let _ = rustix::fs::fallocate(out, rustix::fs::FallocateFlags::empty(), 0, len);
                }
                self.direct = Some(Direct {
                    input: ctx.reactor.adopt(input),
                    out: out.map(|out| ctx.reactor.adopt(out)),
                });
            }
            Err(err) => {
                log::debug!(
                    "{}: direct IO refused ({err}); buffered for this file",
                    self.spec.input.display()
                );
                ctx.metrics.direct_io_fallback();
            }
        }
        Ok(())
    }

    /// A size the output will have at least, to allocate up front: an encrypt's sealed
    /// size; for a decrypt, the plaintext with the most padding the final record can hold
    /// (16 bytes), which the writes then extend by the few bytes the padding was shorter.
    fn output_floor(&self, chunk_log2: u8) -> Option<u64> {
        match self.codec.as_ref()? {
            Codec::Seal { .. } => Some(format::sealed_len(self.in_len, chunk_log2)),
            Codec::Open {
                full_records,
                final_record,
                ..
            } => {
                let last = final_record.checked_sub(TAG_BYTES + crate::limits::BLOCK_BYTES)?;
                Some((full_records << chunk_log2) + last as u64)
            }
            _ => None,
        }
    }

    /// The `O_DIRECT` descriptors, duplicated for a range on another shard.
    pub(super) fn direct_dup(&self, ctx: &JobCtx) -> Result<Option<DirectFds>, Error> {
        let Some(direct) = self.direct else {
            return Ok(None);
        };
        let dup = |file| {
            ctx.reactor
                .fd(file)
                .and_then(|fd| fd.as_fd().try_clone_to_owned())
                .map_err(|e| Error::io("split", &self.spec.input, e))
        };
        Ok(Some(DirectFds {
            input: dup(direct.input)?,
            out: direct.out.map(dup).transpose()?,
        }))
    }

    /// The reads of batch `batch` of a direct job into its lane buffer's first area, and the
    /// bytes they must bring (a read may ask past the end of the file, to a whole block).
    pub(super) fn direct_reads(&self, codec: &Codec, batch: u64, reads: &mut Spans) -> usize {
        // A sealed input (decrypt, verify): one aligned window over the batch's records.
        if let Some((start, len)) = codec.records_at(batch) {
            let (from, to) = (down(start), up(start + len as u64));
            reads.push((0, (to - from) as usize, from));
            return (to.min(self.in_len) - from) as usize;
        }
        // An openssl body never runs direct (`choose_io`): no reads, and its crypto refuses
        // the batch as out of order.
        let Codec::Seal {
            n_full, final_len, ..
        } = codec
        else {
            return 0;
        };
        let (first, units) = codec.span(batch);
        let chunk = codec.chunk_bytes();
        let mut expected = 0;
        for slot in 0..units {
            let index = first + slot as u64;
            let len = if index < *n_full { chunk } else { *final_len };
            if len > 0 {
                reads.push((
                    slot * chunk,
                    len.next_multiple_of(ALIGN),
                    index * chunk as u64,
                ));
                expected += len;
            }
        }
        expected
    }

    /// The input bytes a read of lane `lane` that brought `n` counts for: `n`, but for a
    /// direct job's window of records, which reaches into the blocks of its neighbours and
    /// counts only the batch's own records (the window is its lane's one read).
    pub(super) fn read_counted(&self, lane: usize, n: u32) -> u64 {
        let (Some(_), Some(codec)) = (self.direct, &self.codec) else {
            return u64::from(n);
        };
        codec
            .records_at(self.lanes[lane].batch)
            .map_or(u64::from(n), |(_, len)| len as u64)
    }

    /// The crypto of one batch of a direct job, out of place from the lane buffer's first
    /// area into its second; returns the writes (buffer span, file offset).
    pub(super) fn direct_crypto(
        &mut self,
        ctx: &mut JobCtx,
        lane: usize,
        batch: u64,
    ) -> Result<Spans, Error> {
        let buf_id = self.lanes[lane].buf;
        let input = &self.spec.input;
        let Some(codec) = self.codec.as_mut() else {
            return Err(self.out_of_order());
        };
        let (first, units) = codec.span(batch);
        let full = codec.full_in(first, units);
        let (chunk, stride) = (codec.chunk_bytes(), codec.stride());
        let area = area_bytes(stride);
        let start = HEADER_BYTES as u64 + first * stride as u64;
        let shift = (start % ALIGN as u64) as usize;
        let auth = |_| Error::from(format::AuthFailed).context(input.display());
        let (src, dst) = ctx.reactor.buf_mut(buf_id).split_at_mut(area);
        let mut writes = Spans::new();
        match codec {
            Codec::Seal {
                sealer, final_len, ..
            } => {
                let records = &mut dst[shift..];
                sealer.seal_full_to(&src[..full * chunk], &mut records[..full * stride])?;
                let mut len = full * stride;
                if full < units {
                    let last = &mut records[len..];
                    last[..*final_len].copy_from_slice(&src[full * chunk..][..*final_len]);
                    len += sealer.seal_final(last, *final_len)?;
                }
                edge_writes(area + shift, len, start, &mut writes);
            }
            Codec::Open {
                opener,
                final_record,
                ..
            } => {
                let records = &src[shift..];
                opener
                    .open_full_to(&records[..full * stride], &mut dst[..full * chunk])
                    .map_err(auth)?;
                if full > 0 {
                    writes.push((area, full * chunk, first * chunk as u64));
                }
                if full < units {
                    let last = &mut dst[full * chunk..][..*final_record];
                    last.copy_from_slice(&records[full * stride..][..*final_record]);
                    let plain = opener.open_final(last).map_err(auth)?;
                    let offset = (first + full as u64) * chunk as u64;
                    edge_writes(area + full * chunk, plain, offset, &mut writes);
                }
            }
            Codec::Check {
                opener,
                final_record,
                ..
            } => {
                let records = &src[shift..];
                opener.check_full(&records[..full * stride]).map_err(auth)?;
                let mut plain = full * chunk;
                if full < units {
                    let last = &records[full * stride..][..*final_record];
                    plain += opener.check_final(last).map_err(auth)?;
                }
                self.bytes_out += plain as u64;
                if let Some(part) = &self.part_of {
                    part.progress.add(0, plain as u64);
                }
            }
            Codec::Legacy { .. } | Codec::Reseal { .. } => return Err(self.out_of_order()),
        }
        Ok(writes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_split_at_blocks_and_cover_the_span_once() {
        for (offset, len) in [
            (96u64, 10usize),
            (96, 4000),
            (96, 4001),
            (4096, 8192),
            (100, 9000),
            (0, 4096),
            (4000, 5),
        ] {
            let mut writes = Spans::new();
            edge_writes(offset as usize % ALIGN, len, offset, &mut writes);
            let mut next = offset;
            for w in writes.as_slice() {
                assert_eq!(w.2, next, "contiguous");
                assert_eq!(w.0 as u64 % ALIGN as u64, w.2 % ALIGN as u64);
                next += w.1 as u64;
                let middle = w.2 > offset && w.2 + (w.1 as u64) < offset + len as u64;
                assert!(
                    !middle || aligned(w),
                    "a span in the middle must be whole blocks: {w:?}"
                );
            }
            assert_eq!(next, offset + len as u64, "covers ({offset}, {len})");
            assert!(writes.as_slice().iter().filter(|w| !aligned(w)).count() <= 2);
        }
    }

    #[test]
    fn proc_path_names_the_descriptor() {
        let file = std::fs::File::open("/dev/null").expect("/dev/null");
        let mut buf = [0u8; 32];
        let path = proc_fd_path(file.as_fd(), &mut buf);
        use std::os::fd::AsRawFd;
        assert_eq!(
            path.to_str().expect("ascii"),
            format!("/proc/self/fd/{}", file.as_raw_fd())
        );
    }
}
