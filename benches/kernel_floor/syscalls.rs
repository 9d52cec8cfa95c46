//! The steps every variant shares, as plain blocking syscalls.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, Timestamps};
use rustix::time::Timespec;

use crate::{OUT_MODE, SALT_BYTES};

/// Opens an input as the daemon does: one component, beneath its held directory.
pub fn open_input(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat2(
        dir,
        name,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    )?)
}

/// Reads all of `buf` from the start of `fd`.
pub fn read_full(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = rustix::io::read(fd, &mut buf[done..])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "input shorter than expected",
            ));
        }
        done += n;
    }
    Ok(())
}

pub fn write_full(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        done += rustix::io::write(fd, &buf[done..])?;
    }
    Ok(())
}

/// The daemon's salt for one output.
pub fn salt() -> io::Result<[u8; SALT_BYTES]> {
    let mut salt = [0u8; SALT_BYTES];
    // SAFETY: the pointer and length describe `salt`, writable for the call.
    let n = unsafe { libc::getrandom(salt.as_mut_ptr().cast(), SALT_BYTES, 0) };
    if n != SALT_BYTES as isize {
        return Err(io::Error::last_os_error());
    }
    Ok(salt)
}

/// Creates an unnamed output; `readable` for a shared writable mapping, which needs it.
pub fn create_output(out_dir: BorrowedFd<'_>, readable: bool) -> io::Result<OwnedFd> {
    let access = if readable {
        OFlags::RDWR
    } else {
        OFlags::WRONLY
    };
    Ok(rustix::fs::openat(
        out_dir,
        c".",
        OFlags::TMPFILE | access | OFlags::CLOEXEC,
        Mode::from_raw_mode(OUT_MODE),
    )?)
}

/// The output's modification time is the input's; its access time is left alone.
pub fn stamp(fd: BorrowedFd<'_>, mtime: Timespec) -> io::Result<()> {
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: mtime,
    };
    Ok(rustix::fs::futimens(fd, &times)?)
}

pub fn link(fd: BorrowedFd<'_>, out_dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    Ok(rustix::fs::linkat(
        fd,
        c"",
        out_dir,
        name,
        AtFlags::EMPTY_PATH,
    )?)
}

pub fn mtime_of(fd: BorrowedFd<'_>) -> io::Result<(Timespec, usize)> {
    let st = rustix::fs::fstat(fd)?;
    let mtime = Timespec {
        tv_sec: st.st_mtime,
        tv_nsec: st.st_mtime_nsec as _,
    };
    Ok((mtime, st.st_size as usize))
}

/// The input side of a 4 KiB file: open, `fstat`, read, close; then the salt.
pub fn small_input(in_dir: BorrowedFd<'_>, name: &CStr, buf: &mut [u8]) -> io::Result<Timespec> {
    let fd = open_input(in_dir, name)?;
    let (mtime, len) = mtime_of(fd.as_fd())?;
    read_full(fd.as_fd(), &mut buf[..len])?;
    drop(fd);
    std::hint::black_box(salt()?);
    Ok(mtime)
}
