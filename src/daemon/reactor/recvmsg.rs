//! A connection's receive buffer, [`RecvBuf`], and what `recvmsg` needs around it: the
//! `msghdr` an io_uring recvmsg points at, the control-message space, and taking ownership of
//! the descriptors a peer passes (`SCM_RIGHTS`), whichever backend received them.
//!
//! It owns the buffer's bytes, its header and the descriptors received and not yet taken. It
//! does not submit or run the receive (the backends do), parse what arrived (connections
//! do), or decide whether a passed descriptor is acceptable (requests do).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Descriptors one `recvmsg` can take. A request that passes descriptors passes two, and
/// the kernel never hands over more than one `sendmsg`'s worth per call; a peer that sends
/// more has the rest closed by the kernel and sees its requests fail.
pub const RECV_FDS_MAX: usize = 8;

/// Control-message space for [`RECV_FDS_MAX`] descriptors: `CMSG_SPACE(8 * 4)` is 48 bytes
/// on 64-bit Linux; a whole number of u64 keeps the header aligned.
const CONTROL_WORDS: usize = 8;

/// A connection's receive state: the bytes read so far, the descriptors that came with
/// them, and the `msghdr` an io_uring `recvmsg` points at. Boxed and owned by the
/// connection, lent to each `Recv` op and handed back with its completion, so its address
/// is stable while the kernel writes into it and no receive allocates.
pub struct RecvBuf {
    /// Received bytes; the next recv writes at `filled` up to the vector's length.
    pub data: Vec<u8>,
    pub filled: usize,
    /// Descriptors received and not yet taken by a request, oldest first.
    pub fds: VecDeque<OwnedFd>,
    /// The kernel dropped descriptors that did not fit (`MSG_CTRUNC`).
    pub fds_truncated: bool,
    hdr: libc::msghdr,
    iov: libc::iovec,
    control: [u64; CONTROL_WORDS],
}

// SAFETY: the raw pointers in `hdr` and `iov` only ever point into this same box (its
// `data` vector and `control` array) and are rewritten before every op, so moving the box
// to another thread moves everything they point to along with it.
#[allow(unsafe_code)]
unsafe impl Send for RecvBuf {}

impl RecvBuf {
    pub fn new(bytes: usize) -> Box<RecvBuf> {
        Box::new(RecvBuf {
            data: vec![0u8; bytes],
            filled: 0,
            fds: VecDeque::new(),
            fds_truncated: false,
            hdr: zeroed_msghdr(),
            iov: libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            },
            control: [0; CONTROL_WORDS],
        })
    }

    /// Points `hdr` at this box's free bytes and control space for one recvmsg. The pointer
    /// stays valid while the box lives and is neither moved out of nor touched: the op that
    /// owns the box until its completion.
    pub(super) fn prepare(&mut self) -> *mut libc::msghdr {
        let free = &mut self.data[self.filled..];
        self.iov.iov_base = free.as_mut_ptr().cast();
        self.iov.iov_len = free.len();
        self.control = [0; CONTROL_WORDS];
        self.hdr = zeroed_msghdr();
        self.hdr.msg_iov = &mut self.iov;
        self.hdr.msg_iovlen = 1;
        self.hdr.msg_control = self.control.as_mut_ptr().cast();
        self.hdr.msg_controllen = std::mem::size_of_val(&self.control) as _;
        &mut self.hdr
    }

    /// After an io_uring recvmsg completed: takes ownership of the descriptors the kernel
    /// installed, from the control messages it wrote back (`msg_controllen`, `msg_flags`).
    #[allow(unsafe_code)]
    pub(super) fn collect_fds(&mut self) {
        if self.hdr.msg_flags & libc::MSG_CTRUNC != 0 {
            self.fds_truncated = true;
        }
        let limit = std::mem::size_of_val(&self.control);
        if self.hdr.msg_controllen > limit {
            return;
        }
        // SAFETY: the recvmsg completed, so the kernel is done with `hdr` and `control`: it
        // filled `control` with well-formed control messages up to `msg_controllen`, which is
        // checked to lie inside it; CMSG_FIRSTHDR/NXTHDR stay within that length, and an
        // SCM_RIGHTS message's data is an array of ints that the kernel installed as new
        // descriptors of this process, owned by nobody else.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&self.hdr);
            while !cmsg.is_null() {
                let header_len = libc::CMSG_LEN(0) as usize;
                let len = (*cmsg).cmsg_len as usize;
                if (*cmsg).cmsg_level == libc::SOL_SOCKET
                    && (*cmsg).cmsg_type == libc::SCM_RIGHTS
                    && len >= header_len
                {
                    let count = (len - header_len) / std::mem::size_of::<RawFd>();
                    let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                    for i in 0..count {
                        let raw = data.add(i).read_unaligned();
                        self.fds.push_back(OwnedFd::from_raw_fd(raw));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&self.hdr, cmsg);
            }
        }
    }

    /// The synchronous backend's receive: one non-blocking `recvmsg` into the free bytes,
    /// keeping any descriptors passed with them. `WouldBlock` when nothing is there yet.
    pub(super) fn recv_now(&mut self, fd: BorrowedFd<'_>) -> io::Result<u32> {
        use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};
        let mut space =
            [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(RECV_FDS_MAX))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [io::IoSliceMut::new(&mut self.data[self.filled..])];
        let msg = rustix::net::recvmsg(
            fd,
            &mut iov,
            &mut control,
            RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
        )?;
        if msg.flags.contains(ReturnFlags::CTRUNC) {
            self.fds_truncated = true;
        }
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = message {
                self.fds.extend(fds);
            }
        }
        Ok(msg.bytes as u32)
    }
}

/// An empty `msghdr`: no name, no data, no control space.
#[allow(unsafe_code)]
fn zeroed_msghdr() -> libc::msghdr {
    // SAFETY: msghdr is a plain C struct (integers and raw pointers, plus private padding
    // on some targets) for which all-zero is a valid, empty value; no pointer in it is
    // followed until `prepare` sets it.
    unsafe { std::mem::zeroed() }
}
