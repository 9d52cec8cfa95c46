//! Who a client is, and acting as them.
//!
//! A client's identity is what the kernel reports for its end of the socket: its uid and
//! gid (`SO_PEERCRED`) and its supplementary groups (`SO_PEERGROUPS`), never anything the
//! client says. A path job for a client that is neither root nor the daemon's own uid runs
//! with that identity, so the daemon never does for a caller what the caller could not do
//! itself: the kernel checks the caller's right to search, read, create and replace.
//!
//! Two ways to act as a caller, one per backend:
//! - io_uring: the shard registers the caller's credentials with its ring once (a
//!   personality, see `reactor`), and every op of the caller's jobs carries its id; the
//!   kernel runs the op, inline or on an io-wq worker, with those credentials.
//! - Everything else (the sync backend's syscalls, a tree's walk, the metadata calls a job
//!   makes directly): [`ActAs`] switches the calling *thread's* filesystem uid, gid and
//!   groups for the duration of a scope, and switches them back when dropped. The raw
//!   syscalls are per thread (Linux keeps credentials per task); glibc's `setuid` family
//!   would change every thread of the process, so none of them is used here.
//!
//! Switching needs `CAP_SETUID` and `CAP_SETGID`; [`can_act_as_callers`] says whether the
//! daemon has them. Setting a non-zero filesystem uid drops the filesystem capabilities
//! (`CAP_DAC_OVERRIDE` and friends) from the thread's effective set, and setting it back to
//! 0 restores them, which is what makes root's thread act as an ordinary user.
//!
//! What this room does not do: decide who may call (the shard's allow lists) or which jobs
//! run as whom (the shard), or register personalities (the reactor).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use rustix::process::Gid;

/// Supplementary groups read for a peer. Linux allows 65,536 (`NGROUPS_MAX`); a peer with
/// more than this many is refused rather than served with a truncated list, which could
/// only ever *grant* too little, but would make the identity wrong.
pub const PEER_GROUPS_MAX: usize = 65_536;

/// A client's identity, as the kernel reported it when the client connected.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, sorted, without duplicates (in the form `setgroups` takes, so
    /// taking them on allocates nothing).
    pub groups: Box<[Gid]>,
}

impl Caller {
    /// The identity of the peer of a connected Unix socket.
    pub fn of_peer(fd: BorrowedFd<'_>) -> io::Result<Caller> {
        let creds = rustix::net::sockopt::socket_peercred(fd)?;
        let mut groups = peer_groups(fd)?;
        groups.sort_unstable();
        groups.dedup();
        Ok(Caller {
            uid: creds.uid.as_raw(),
            gid: creds.gid.as_raw(),
            groups: groups.into_iter().map(Gid::from_raw).collect(),
        })
    }

    /// An identity with no supplementary groups (tests, and peers whose groups the kernel
    /// does not report).
    pub fn plain(uid: u32, gid: u32) -> Caller {
        Caller {
            uid,
            gid,
            groups: Box::new([]),
        }
    }

    /// Root or the daemon's own uid: their jobs run with the daemon's rights.
    pub fn is_admin(&self, daemon_uid: u32) -> bool {
        self.uid == 0 || self.uid == daemon_uid
    }
}

/// `getsockopt(SO_PEERGROUPS)`: the peer's supplementary groups when it connected.
#[allow(unsafe_code)]
fn peer_groups(fd: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    // Most callers have a handful of groups: start small, grow once to what the kernel
    // says it needs.
    let mut groups: Vec<libc::gid_t> = vec![0; 32];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: `groups` is a live, writable buffer of exactly `len` bytes for the whole
        // call, and the kernel writes at most `len` bytes into it (it reports ERANGE and the
        // needed length instead of writing past it). `fd` is a borrowed, open descriptor.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc == 0 {
            groups.truncate(len as usize / std::mem::size_of::<libc::gid_t>());
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        let needed = len as usize / std::mem::size_of::<libc::gid_t>();
        match err.raw_os_error() {
            Some(libc::ERANGE) if needed > groups.len() && needed <= PEER_GROUPS_MAX => {
                groups.resize(needed, 0);
            }
            // Not a Unix socket's peer (a socketpair in a test, say): no groups known.
            Some(libc::ENODATA) | Some(libc::ENOPROTOOPT) => return Ok(Vec::new()),
            _ => return Err(err),
        }
    }
}

/// Whether this process may switch its threads' filesystem identity: `CAP_SETUID` and
/// `CAP_SETGID` in its effective set (root has them; the packaged unit's `ringcrypt` user
/// does not).
pub fn can_act_as_callers() -> bool {
    use rustix::thread::CapabilitySet;
    rustix::thread::capabilities(None).is_ok_and(|sets| {
        sets.effective
            .contains(CapabilitySet::SETUID | CapabilitySet::SETGID)
    })
}

/// The calling thread's filesystem identity before any switch, to go back to.
struct Baseline {
    fsuid: u32,
    fsgid: u32,
    groups: Vec<Gid>,
}

thread_local! {
    static BASELINE: std::cell::OnceCell<Baseline> = const { std::cell::OnceCell::new() };
}

/// Sets the thread's filesystem uid; returns the one it had (the syscall never fails
/// loudly: it returns the old value whether or not it changed anything).
#[allow(unsafe_code)]
fn set_fsuid(uid: u32) -> u32 {
    // SAFETY: setfsuid takes a plain integer and touches no memory of ours; glibc runs it
    // as a direct syscall on this thread only.
    unsafe { libc::setfsuid(uid) as u32 }
}

#[allow(unsafe_code)]
fn set_fsgid(gid: u32) -> u32 {
    // SAFETY: as for `set_fsuid`.
    unsafe { libc::setfsgid(gid) as u32 }
}

/// While alive, the current thread's filesystem uid, gid and groups are a caller's.
/// Dropping it restores the thread's own. Not `Send`: credentials belong to one thread.
pub struct ActAs {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl ActAs {
    /// Switches this thread to `caller`'s filesystem identity. Fails (and leaves the
    /// thread as it was) when the switch does not take.
    pub fn enter(caller: &Caller) -> io::Result<ActAs> {
        BASELINE.with(|cell| {
            cell.get_or_init(|| Baseline {
                fsuid: rustix::process::geteuid().as_raw(),
                fsgid: rustix::process::getegid().as_raw(),
                groups: rustix::process::getgroups().unwrap_or_default(),
            });
        });
        rustix::thread::set_thread_groups(&caller.groups)?;
        set_fsgid(caller.gid);
        set_fsuid(caller.uid);
        // Each call returns the value in force: check that both switches took.
        let (uid_now, gid_now) = (set_fsuid(caller.uid), set_fsgid(caller.gid));
        let guard = ActAs {
            _not_send: std::marker::PhantomData,
        };
        if uid_now != caller.uid || gid_now != caller.gid {
            drop(guard);
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "cannot take on the caller's identity (the daemon lacks CAP_SETUID/CAP_SETGID)",
            ));
        }
        Ok(guard)
    }

    /// Like [`ActAs::enter`] for `Some(caller)`; nothing for `None` (the daemon's own
    /// rights).
    pub fn maybe(caller: Option<&Caller>) -> io::Result<Option<ActAs>> {
        caller.map(ActAs::enter).transpose()
    }
}

impl Drop for ActAs {
    fn drop(&mut self) {
        BASELINE.with(|cell| {
            let base = cell.get().expect("set by enter");
            // uid first: going back to 0 restores the filesystem capabilities, which the
            // other two calls then have in any case.
            set_fsuid(base.fsuid);
            set_fsgid(base.fsgid);
            // The groups were set from this thread a moment ago with the same rights.
            let _ = rustix::thread::set_thread_groups(&base.groups);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_acts_as_a_caller_and_comes_back() {
        if !can_act_as_callers() {
            eprintln!("skipped: needs CAP_SETUID and CAP_SETGID");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"root only").unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        // Run on a fresh thread so a failure cannot leave the test runner's thread switched.
        std::thread::spawn(move || {
            assert!(std::fs::read(&secret).is_ok(), "root reads its own file");
            {
                let _as = ActAs::enter(&Caller::plain(65534, 65534)).unwrap();
                let err = std::fs::read(&secret).unwrap_err();
                assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
            }
            assert!(std::fs::read(&secret).is_ok(), "the thread is root again");
        })
        .join()
        .unwrap();
    }
}
