//! Per-file variants through io_uring: the output side of every file on one ring, 16 files
//! in flight, unlinked (each op submitted when the previous one completed) or linked into
//! one chain through a direct descriptor.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use rustix::time::Timespec;

use crate::data::SmallSet;
use crate::syscalls::{small_input, stamp};
use crate::{
    BODY_BYTES, FILES_PER_DIR, HEADER_BYTES, IN_FLIGHT, OUT_MODE, RING_ENTRIES, SEALED_BYTES,
    SMALL_IN_BYTES,
};

/// `user_data` tags of the io_uring ops; the in-flight slot sits above them.
const TAG_OPEN: u64 = 1;
const TAG_HEADER: u64 = 2;
const TAG_BODY: u64 = 3;
const TAG_SEALED: u64 = 4;
const TAG_INSTALL: u64 = 5;
const TAG_CLOSE_FIXED: u64 = 6;
const TAG_LINK: u64 = 7;
const TAG_BITS: u32 = 8;

/// One in-flight file of an io_uring pass.
#[derive(Default)]
struct Slot {
    file: usize,
    mtime: Option<Timespec>,
    fd: Option<OwnedFd>,
    /// Ops submitted and not yet completed; the slot is free again at zero.
    pending: u32,
}

pub struct UringPass<'a> {
    set: &'a SmallSet,
    out: &'a [OwnedFd],
    ring: &'a mut IoUring,
    linked: bool,
    slots: Vec<Slot>,
    buf: [u8; SMALL_IN_BYTES],
}

fn user_data(slot: usize, tag: u64) -> u64 {
    ((slot as u64) << TAG_BITS) | tag
}

/// The result of a completion, or its error with the op named.
fn completed(res: i32, what: &str) -> io::Result<i32> {
    if res < 0 {
        let e = io::Error::from_raw_os_error(-res);
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(res)
}

impl<'a> UringPass<'a> {
    pub fn new(
        set: &'a SmallSet,
        out: &'a [OwnedFd],
        ring: &'a mut IoUring,
        linked: bool,
    ) -> UringPass<'a> {
        UringPass {
            set,
            out,
            ring,
            linked,
            slots: (0..IN_FLIGHT).map(|_| Slot::default()).collect(),
            buf: [0u8; SMALL_IN_BYTES],
        }
    }

    pub fn run(mut self) -> io::Result<()> {
        let total = self.set.files();
        let mut next = 0;
        let mut done = 0;
        let mut cqes: Vec<(u64, i32)> = Vec::with_capacity(RING_ENTRIES as usize * 2);
        while done < total {
            for s in 0..IN_FLIGHT {
                if next < total && self.slots[s].pending == 0 {
                    self.start(s, next)?;
                    next += 1;
                }
            }
            self.ring.submit_and_wait(1)?;
            cqes.clear();
            cqes.extend(
                self.ring
                    .completion()
                    .map(|c: cqueue::Entry| (c.user_data(), c.result())),
            );
            for &(data, res) in &cqes {
                let slot = (data >> TAG_BITS) as usize;
                let tag = data & ((1 << TAG_BITS) - 1);
                self.slots[slot].pending -= 1;
                self.complete(slot, tag, res)?;
                if self.slots[slot].pending == 0 {
                    done += 1;
                }
            }
        }
        Ok(())
    }

    /// Pushes entries that must reach the kernel in one submission (a linked chain).
    fn push(&mut self, entries: &[squeue::Entry]) -> io::Result<()> {
        let free = {
            let sq = self.ring.submission();
            sq.capacity() - sq.len()
        };
        if free < entries.len() {
            self.ring.submit()?;
        }
        // SAFETY: every pointer in these entries stays valid until the op completes: the
        // names and the output bytes live in `self.set`, borrowed for the whole pass, and
        // the pass waits for every op's completion before it returns; no buffer the kernel
        // reads is written while an op is in flight. The descriptors the entries name are
        // held in `self.slots` or `self.out` until their ops complete.
        unsafe { self.ring.submission().push_multiple(entries) }
            .map_err(|_| io::Error::other("submission queue full"))?;
        self.slots[(entries[0].get_user_data() >> TAG_BITS) as usize].pending +=
            entries.len() as u32;
        Ok(())
    }

    fn start(&mut self, s: usize, file: usize) -> io::Result<()> {
        let (in_dir, out_dir, _) = self.set.file(self.out, file);
        let mtime = small_input(in_dir, &self.set.names[file % FILES_PER_DIR], &mut self.buf)?;
        self.slots[s].file = file;
        self.slots[s].mtime = Some(mtime);
        let out_fd = types::Fd(out_dir.as_raw_fd());
        let flags = libc::O_TMPFILE | libc::O_WRONLY | libc::O_CLOEXEC;
        if !self.linked {
            let open = opcode::OpenAt::new(out_fd, c".".as_ptr())
                .flags(flags)
                .mode(OUT_MODE)
                .build()
                .user_data(user_data(s, TAG_OPEN));
            return self.push(&[open]);
        }
        let fixed = types::Fixed(s as u32);
        let dest = types::DestinationSlot::try_from_slot_target(s as u32)
            .map_err(|_| io::Error::other("slot out of range"))?;
        let chain = [
            // A direct descriptor takes no O_CLOEXEC (the kernel refuses it): it is no
            // descriptor of the process until installed, and the install sets it.
            opcode::OpenAt::new(out_fd, c".".as_ptr())
                .flags(flags & !libc::O_CLOEXEC)
                .mode(OUT_MODE)
                .file_index(Some(dest))
                .build()
                .flags(squeue::Flags::IO_LINK)
                .user_data(user_data(s, TAG_OPEN)),
            opcode::Write::new(fixed, self.set.sealed.as_ptr(), SEALED_BYTES as u32)
                .offset(0)
                .build()
                .flags(squeue::Flags::IO_LINK)
                .user_data(user_data(s, TAG_SEALED)),
            opcode::FixedFdInstall::new(fixed, 0)
                .build()
                .flags(squeue::Flags::IO_LINK)
                .user_data(user_data(s, TAG_INSTALL)),
            opcode::Close::new(fixed)
                .build()
                .user_data(user_data(s, TAG_CLOSE_FIXED)),
        ];
        self.push(&chain)
    }

    fn complete(&mut self, s: usize, tag: u64, res: i32) -> io::Result<()> {
        match tag {
            TAG_OPEN if self.linked => {
                completed(res, "OPENAT O_TMPFILE into a direct descriptor")?;
            }
            TAG_OPEN => {
                let fd = completed(res, "OPENAT O_TMPFILE")?;
                // SAFETY: the kernel just installed this descriptor for this op; nothing
                // else owns it.
                self.slots[s].fd = Some(unsafe { OwnedFd::from_raw_fd(fd) });
                self.write(s, TAG_HEADER, 0, HEADER_BYTES)?;
            }
            TAG_HEADER => {
                expect_len(completed(res, "WRITE header")?, HEADER_BYTES)?;
                self.write(s, TAG_BODY, HEADER_BYTES, BODY_BYTES)?;
            }
            TAG_BODY => {
                expect_len(completed(res, "WRITE body")?, BODY_BYTES)?;
                self.stamp_and_link(s)?;
            }
            TAG_SEALED => {
                expect_len(
                    completed(res, "WRITE header and body (fixed)")?,
                    SEALED_BYTES,
                )?;
            }
            TAG_INSTALL => {
                let fd = completed(res, "FIXED_FD_INSTALL")?;
                // SAFETY: the kernel just installed this descriptor for this op; nothing
                // else owns it.
                self.slots[s].fd = Some(unsafe { OwnedFd::from_raw_fd(fd) });
                self.stamp_and_link(s)?;
            }
            TAG_CLOSE_FIXED => {
                completed(res, "CLOSE of the fixed slot")?;
            }
            TAG_LINK => {
                completed(res, "LINKAT")?;
                self.slots[s].fd = None;
            }
            _ => unreachable!("every tag pushed is handled"),
        }
        Ok(())
    }

    fn write(&mut self, s: usize, tag: u64, at: usize, len: usize) -> io::Result<()> {
        let fd = self.slots[s]
            .fd
            .as_ref()
            .expect("a write follows the open")
            .as_raw_fd();
        let entry = opcode::Write::new(types::Fd(fd), self.set.sealed[at..].as_ptr(), len as u32)
            .offset(at as u64)
            .build()
            .user_data(user_data(s, tag));
        self.push(&[entry])
    }

    fn stamp_and_link(&mut self, s: usize) -> io::Result<()> {
        let slot = &self.slots[s];
        let fd = slot.fd.as_ref().expect("the output is open").as_fd();
        stamp(fd, slot.mtime.expect("the input was read"))?;
        let (_, out_dir, name) = self.set.file(self.out, slot.file);
        let entry = opcode::LinkAt::new(
            types::Fd(fd.as_raw_fd()),
            c"".as_ptr(),
            types::Fd(out_dir.as_raw_fd()),
            name.as_ptr(),
        )
        .flags(libc::AT_EMPTY_PATH)
        .build()
        .user_data(user_data(s, TAG_LINK));
        self.push(&[entry])
    }
}

fn expect_len(got: i32, want: usize) -> io::Result<()> {
    if got as usize != want {
        return Err(io::Error::other(format!(
            "short write: {got} of {want} bytes"
        )));
    }
    Ok(())
}
