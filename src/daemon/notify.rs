//! systemd integration without libsystemd: `sd_notify` datagrams (READY, STATUS, WATCHDOG,
//! STOPPING) to `$NOTIFY_SOCKET`, the watchdog interval from `$WATCHDOG_USEC`, and socket
//! activation (`$LISTEN_FDS`/`$LISTEN_PID`). Outside systemd every call is a no-op.
//!
//! What this room does not do: decide when the daemon is ready or healthy (`daemon` does).

use std::os::fd::OwnedFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// A connection to the service manager's notification socket, if there is one.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket).
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let bytes = path.as_encoded_bytes();
            let addr = match bytes.strip_prefix(b"@") {
                Some(name) => SocketAddr::from_abstract_name(name).ok()?,
                None => SocketAddr::from_pathname(std::path::Path::new(&path)).ok()?,
            };
            Some((UnixDatagram::unbound().ok()?, addr))
        });
        Notifier { target }
    }

    /// Sends one state message, e.g. `READY=1` or `STATUS=...`. Failures are ignored: the
    /// service manager going away must not stop the daemon.
    pub fn send(&self, state: &str) {
        if let Some((socket, addr)) = &self.target {
            let _ = socket.send_to_addr(state.as_bytes(), addr);
        }
    }

    pub fn is_active(&self) -> bool {
        self.target.is_some()
    }
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, when the watchdog is meant for
/// this process (`$WATCHDOG_PID` unset or ours).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// The listening socket systemd passed (socket activation), when `$LISTEN_PID` is this
/// process and `$LISTEN_FDS` names at least one descriptor that is a Unix stream socket.
pub fn inherited_listener() -> std::io::Result<Option<OwnedFd>> {
    let mut passed = listenfd::ListenFd::from_env();
    if passed.len() == 0 {
        return Ok(None);
    }
    Ok(passed.take_unix_listener(0)?.map(OwnedFd::from))
}

/// What a listening socket is bound to, for the log: its path, `@name` for an abstract
/// address, or a note that it has none.
pub fn listener_name(listener: &OwnedFd) -> String {
    let Ok(fd) = listener.try_clone() else {
        return "a socket passed by systemd".to_string();
    };
    match std::os::unix::net::UnixListener::from(fd).local_addr() {
        Ok(addr) => match addr.as_pathname() {
            Some(path) => path.display().to_string(),
            None => {
                use std::os::linux::net::SocketAddrExt;
                match addr.as_abstract_name() {
                    Some(name) => format!("@{}", String::from_utf8_lossy(name)),
                    None => "an unnamed socket".to_string(),
                }
            }
        },
        Err(err) => format!("a socket passed by systemd (its address is unknown: {err})"),
    }
}
