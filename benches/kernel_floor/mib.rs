//! Per-MiB variants: `read` and `write` against the input, the output or both mapped.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::mm::{MapFlags, ProtFlags};

use crate::HEADER_BYTES;
use crate::data::MibSet;
use crate::syscalls::{
    create_output, link, mtime_of, open_input, read_full, salt, stamp, write_full,
};

#[derive(Clone, Copy)]
pub enum MibVariant {
    ReadWrite,
    MmapInPopulate,
    MmapInFaults,
    MmapOut,
    MmapBoth,
}

impl MibVariant {
    pub const ALL: [MibVariant; 5] = [
        MibVariant::ReadWrite,
        MibVariant::MmapInPopulate,
        MibVariant::MmapInFaults,
        MibVariant::MmapOut,
        MibVariant::MmapBoth,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            MibVariant::ReadWrite => "read-write",
            MibVariant::MmapInPopulate => "mmap-in-populate",
            MibVariant::MmapInFaults => "mmap-in-faults",
            MibVariant::MmapOut => "mmap-out",
            MibVariant::MmapBoth => "mmap-both",
        }
    }

    fn maps_input(&self) -> Option<MapFlags> {
        match self {
            MibVariant::MmapInPopulate | MibVariant::MmapBoth => {
                Some(MapFlags::PRIVATE | MapFlags::POPULATE)
            }
            MibVariant::MmapInFaults => Some(MapFlags::PRIVATE),
            MibVariant::ReadWrite | MibVariant::MmapOut => None,
        }
    }

    fn maps_output(&self) -> bool {
        matches!(self, MibVariant::MmapOut | MibVariant::MmapBoth)
    }

    pub fn pass(&self, set: &MibSet, out: &[OwnedFd], buf: &mut [u8]) -> io::Result<()> {
        for i in 0..set.files() {
            let (in_dir, out_dir, name) = set.file(out, i);
            let input = open_input(in_dir, name)?;
            let (mtime, len) = mtime_of(input.as_fd())?;
            let data: Mapping;
            let plain: &[u8] = match self.maps_input() {
                Some(flags) => {
                    data = Mapping::new(input.as_fd(), len, ProtFlags::READ, flags)?;
                    data.bytes()
                }
                None => {
                    read_full(input.as_fd(), &mut buf[..len])?;
                    &buf[..len]
                }
            };
            drop(input);
            std::hint::black_box(salt()?);
            let fd = create_output(out_dir, self.maps_output())?;
            if self.maps_output() {
                let total = HEADER_BYTES + len;
                rustix::fs::ftruncate(&fd, total as u64)?;
                let mut dst = Mapping::new(
                    fd.as_fd(),
                    total,
                    ProtFlags::READ | ProtFlags::WRITE,
                    MapFlags::SHARED | MapFlags::POPULATE,
                )?;
                let dst = dst.bytes_mut();
                dst[..HEADER_BYTES].copy_from_slice(&set.header);
                dst[HEADER_BYTES..].copy_from_slice(plain);
            } else {
                write_full(fd.as_fd(), &set.header)?;
                write_full(fd.as_fd(), plain)?;
            }
            stamp(fd.as_fd(), mtime)?;
            link(fd.as_fd(), out_dir, name)?;
        }
        Ok(())
    }
}

/// A file mapping, unmapped when dropped.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(
        fd: BorrowedFd<'_>,
        len: usize,
        prot: ProtFlags,
        flags: MapFlags,
    ) -> io::Result<Mapping> {
        // SAFETY: a new mapping at an address the kernel picks aliases no Rust memory; the
        // file is the caller's and is not truncated while mapped, and the mapping lives
        // until `drop` unmaps it.
        let ptr = unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0)? };
        Ok(Mapping { ptr, len })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes, valid until drop, which the borrow
        // of `self` outlives; nothing writes the (private, read-only) input through it.
        unsafe { std::slice::from_raw_parts(self.ptr.cast(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` writable bytes (mapped with PROT_WRITE by the one
        // caller that asks for this), valid until drop, and borrowed exclusively.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.cast(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len` are the mapping `new` made, unmapped once, here; no slice
        // of it outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr, self.len) };
    }
}
