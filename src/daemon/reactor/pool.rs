//! The shard's fixed buffer pool: every buffer allocated when the reactor is made, handed out
//! by [`BufId`] (`acquire`/`release`), and lent to ops in flight, which the pool counts so
//! that no one touches a buffer while the kernel may write into it.
//!
//! It owns the buffers' memory and says where a span of it lies; it does not make ops, talk
//! to the kernel (the io_uring backend registers these buffers), or allocate after it is
//! made: when every buffer is out, `acquire` says so and the caller waits.
//!
//! Every buffer starts on a page boundary ([`BUF_ALIGN`]), so that direct IO (`O_DIRECT`,
//! which wants memory aligned to the device's block) can read into it and write from it at
//! any block-aligned span.

/// A buffer of the shard's fixed pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufId(u16);

impl BufId {
    /// The buffer's index in the pool, which is also its io_uring fixed-buffer index.
    pub(super) fn index(self) -> u16 {
        self.0
    }
}

/// The alignment of every pool buffer's start: a page, which is also the largest logical
/// block size direct IO is done at.
pub const BUF_ALIGN: usize = 4096;

pub(super) struct Pool {
    /// Boxed slices, allocated once and never reallocated or freed before the reactor is
    /// dropped: their addresses may be registered with a ring. Each is `BUF_ALIGN` bytes
    /// longer than a buffer; the buffer is the span from its first page boundary on.
    bufs: Vec<Box<[u8]>>,
    /// Where each buffer's aligned span starts in its slice.
    starts: Vec<usize>,
    /// In-flight ops per buffer (reads of one batch share a buffer at distinct spans).
    lent: Vec<u16>,
    free: Vec<u16>,
    buf_bytes: usize,
}

impl Pool {
    pub(super) fn new(buffers: u16, buf_bytes: usize) -> Pool {
        let bufs: Vec<Box<[u8]>> = (0..buffers)
            .map(|_| vec![0u8; buf_bytes + BUF_ALIGN].into_boxed_slice())
            .collect();
        let starts = bufs
            .iter()
            .map(|buf| buf.as_ptr().align_offset(BUF_ALIGN))
            .collect();
        Pool {
            bufs,
            starts,
            lent: vec![0; usize::from(buffers)],
            free: (0..buffers).rev().collect(),
            buf_bytes,
        }
    }

    pub(super) fn buf_bytes(&self) -> usize {
        self.buf_bytes
    }

    /// Every buffer, in [`BufId`] order, for registering them with a ring.
    pub(super) fn buffers_mut(&mut self) -> impl ExactSizeIterator<Item = &mut [u8]> {
        let bytes = self.buf_bytes;
        self.bufs
            .iter_mut()
            .zip(&self.starts)
            .map(move |(buf, &start)| &mut buf[start..start + bytes])
    }

    pub(super) fn acquire(&mut self) -> Option<BufId> {
        self.free.pop().map(BufId)
    }

    pub(super) fn free_buffers(&self) -> usize {
        self.free.len()
    }

    pub(super) fn release(&mut self, id: BufId) {
        assert_eq!(
            self.lent[usize::from(id.0)],
            0,
            "released a buffer the kernel still uses"
        );
        debug_assert!(!self.free.contains(&id.0), "double release");
        self.free.push(id.0);
    }

    pub(super) fn buf_mut(&mut self, id: BufId) -> &mut [u8] {
        assert_eq!(
            self.lent[usize::from(id.0)],
            0,
            "buffer {id:?} is in flight"
        );
        let (index, bytes) = (usize::from(id.0), self.buf_bytes);
        &mut self.bufs[index][self.starts[index]..][..bytes]
    }

    /// Marks a buffer lent to one more op and returns its span `[at, at + len)`, which the
    /// op may read or write until [`Pool::unlend`].
    pub(super) fn lend(&mut self, buf: BufId, at: usize, len: usize) -> &mut [u8] {
        let index = usize::from(buf.0);
        assert!(at + len <= self.buf_bytes, "span {at}+{len} outside buffer");
        // Concurrent ops on one buffer use disjoint spans (a batch's chunk reads).
        self.lent[index] += 1;
        &mut self.bufs[index][self.starts[index] + at..][..len]
    }

    /// The span `[at, at + len)` of a buffer already lent to an op (a stream op the sync
    /// backend parked), for the op's own syscall when it is retried.
    pub(super) fn lent_span(&mut self, buf: BufId, at: usize, len: usize) -> &mut [u8] {
        let index = usize::from(buf.0);
        assert!(self.lent[index] > 0, "buffer {buf:?} is not lent");
        assert!(at + len <= self.buf_bytes, "span {at}+{len} outside buffer");
        &mut self.bufs[index][self.starts[index] + at..][..len]
    }

    /// An op that had `buf` lent has completed.
    pub(super) fn unlend(&mut self, buf: BufId) {
        self.lent[usize::from(buf.0)] -= 1;
    }
}
