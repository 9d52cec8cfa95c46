//! The reactor's descriptor table: every descriptor an op names is owned here, and ops name
//! it by a [`File`] handle, never by number.
//!
//! Why: an op queued in the ring names its descriptor by number until the kernel picks it
//! up, and the kernel resolves that number when it issues the op, which can be after the
//! push returned. Closing a descriptor then would let the next `open` reuse the number and
//! the queued op would read or write another file. Here a close waits for the ops in
//! flight on the descriptor: [`Files::close`] marks it, and it really closes when its last
//! op completes. A handle used after its close (a bug in the caller) fails the op with
//! `EBADF` instead of naming whatever took the number, because a handle carries its
//! entry's generation.
//!
//! The table reuses its entries, so a job that opens and closes files allocates nothing
//! once the table has seen the most descriptors a shard holds at once.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;

/// A descriptor owned by a reactor's table. Copy, like the number it stands for, but it can
/// never name another file: see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct File {
    index: u32,
    generation: u32,
}

impl File {
    /// The table entry this handle names, as an op in flight pins it.
    pub(super) fn index(self) -> u32 {
        self.index
    }
}

/// What an entry holds: its own descriptor, or a share of one that other entries (of this
/// reactor or another shard's) hold too, such as a tree directory that every file job of the
/// directory opens its files in. A shared descriptor closes when its last holder lets go.
enum Held {
    Own(OwnedFd),
    Shared(Arc<OwnedFd>),
}

impl Held {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Held::Own(fd) => fd.as_fd(),
            Held::Shared(fd) => fd.as_fd(),
        }
    }
}

struct Entry {
    fd: Option<Held>,
    generation: u32,
    /// Ops in flight that name this descriptor.
    in_flight: u32,
    /// Closed by its owner: no new op may name it, and it closes when `in_flight` is 0.
    closing: bool,
}

#[derive(Default)]
pub(super) struct Files {
    entries: Vec<Entry>,
    free: Vec<u32>,
}

impl Files {
    /// Takes ownership of `fd` and returns its handle.
    pub(super) fn adopt(&mut self, fd: OwnedFd) -> File {
        self.hold(Held::Own(fd))
    }

    /// Takes a share of `fd` and returns its handle; closing the handle drops the share.
    pub(super) fn adopt_shared(&mut self, fd: Arc<OwnedFd>) -> File {
        self.hold(Held::Shared(fd))
    }

    fn hold(&mut self, fd: Held) -> File {
        match self.free.pop() {
            Some(index) => {
                let entry = &mut self.entries[index as usize];
                entry.fd = Some(fd);
                entry.in_flight = 0;
                entry.closing = false;
                File {
                    index,
                    generation: entry.generation,
                }
            }
            None => {
                self.entries.push(Entry {
                    fd: Some(fd),
                    generation: 0,
                    in_flight: 0,
                    closing: false,
                });
                File {
                    index: (self.entries.len() - 1) as u32,
                    generation: 0,
                }
            }
        }
    }

    fn live(&self, file: File) -> Option<&Entry> {
        self.entries
            .get(file.index as usize)
            .filter(|e| e.generation == file.generation && !e.closing && e.fd.is_some())
    }

    /// The descriptor, for a call made directly on this thread (`fstat`, `fchmod`...).
    pub(super) fn borrow(&self, file: File) -> io::Result<BorrowedFd<'_>> {
        self.live(file)
            .and_then(|e| e.fd.as_ref())
            .map(Held::fd)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }

    /// Counts one more op on `file` and returns its number for the backend, or `EBADF` if
    /// the handle is closed. Paired with [`Files::unpin`] when the op completes.
    pub(super) fn pin(&mut self, file: File) -> io::Result<(RawFd, u32)> {
        let raw = self
            .live(file)
            .and_then(|e| e.fd.as_ref())
            .map(|fd| fd.fd().as_raw_fd())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?;
        self.entries[file.index as usize].in_flight += 1;
        Ok((raw, file.index))
    }

    /// An op pinned on the entry at `index` completed.
    pub(super) fn unpin(&mut self, index: u32) {
        let entry = &mut self.entries[index as usize];
        entry.in_flight -= 1;
        if entry.closing && entry.in_flight == 0 {
            self.release(index);
        }
    }

    /// Closes `file` once no op names it (at once if none does). A stale handle is ignored.
    pub(super) fn close(&mut self, file: File) {
        let Some(entry) = self.entries.get_mut(file.index as usize) else {
            return;
        };
        if entry.generation != file.generation || entry.closing || entry.fd.is_none() {
            return;
        }
        if entry.in_flight == 0 {
            self.release(file.index);
        } else {
            entry.closing = true;
        }
    }

    fn release(&mut self, index: u32) {
        let entry = &mut self.entries[index as usize];
        entry.fd = None;
        entry.closing = false;
        entry.generation = entry.generation.wrapping_add(1);
        self.free.push(index);
    }

    /// Descriptors held (open, or closing with ops in flight).
    #[cfg(test)]
    pub(super) fn held(&self) -> usize {
        self.entries.iter().filter(|e| e.fd.is_some()).count()
    }
}
