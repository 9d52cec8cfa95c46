//! The daemon's own socket: its mode and group (`socket_mode`, `socket_group`), binding it
//! without a moment of wider access, and telling a stale socket file from a live daemon's.
//!
//! What this room does not do: a socket systemd hands over (`notify`), whose mode and group
//! the socket unit sets.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, CWD, Gid, Mode};

use crate::error::{Code, Error};

/// The socket's mode unless told otherwise: owner and group read and write.
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;

/// Who may open the socket file: its mode, and the group it is given (else the daemon's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketAccess {
    pub mode: u32,
    /// The group's name as configured, and its gid.
    pub group: Option<(String, u32)>,
}

impl SocketAccess {
    /// The mode and group as configured, the group looked up by name (or taken as a gid).
    pub fn resolve(mode: Option<u32>, group: Option<&str>) -> Result<SocketAccess, Error> {
        let group = match group {
            // Empty: the daemon's own group, as when the setting is absent.
            None | Some("") => None,
            Some(name) => Some((name.to_string(), group_id(name)?)),
        };
        Ok(SocketAccess {
            mode: mode.unwrap_or(DEFAULT_SOCKET_MODE),
            group,
        })
    }

    /// Gives the socket file at `path` its group, then its mode.
    fn apply(&self, path: &Path) -> Result<(), Error> {
        if let Some((name, gid)) = &self.group {
            rustix::fs::chownat(
                CWD,
                path,
                None,
                Some(Gid::from_raw(*gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| {
                Error::new(
                    Code::PermissionDenied,
                    format!(
                        "cannot give the socket {} to group {name} (gid {gid}): {e}; the daemon's \
                         user must be a member of that group (or have CAP_CHOWN)",
                        path.display()
                    ),
                )
            })?;
        }
        rustix::fs::chmod(path, Mode::from_raw_mode(self.mode))
            .map_err(|e| Error::io("set the mode of", path, e.into()))
    }

    /// `0660`, or `0660, group ringcrypt (gid 990)`: for the start-up line and the check.
    pub fn describe(&self) -> String {
        match &self.group {
            Some((name, gid)) => format!("mode {:04o}, group {name} (gid {gid})", self.mode),
            None => format!("mode {:04o}", self.mode),
        }
    }
}

/// Parses a socket mode: octal digits (`0660`, `660`, `0o660`), at most `0777`.
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o777 && !digits.is_empty() => Ok(mode),
        _ => Err(format!(
            "socket mode {text:?} is not an octal mode from 0000 to 0777 (e.g. 0660)"
        )),
    }
}

/// `socket_mode` in the configuration file: a string of octal digits, as on the command line.
pub fn deserialize_mode<'de, D>(deserializer: D) -> Result<Option<u32>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::Deserialize;
    use serde::de::Error as _;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Number(i64),
    }
    match Raw::deserialize(deserializer)? {
        Raw::Text(text) => parse_mode(&text).map(Some).map_err(D::Error::custom),
        Raw::Number(n) => Err(D::Error::custom(format!(
            "socket_mode {n} is a number; write the mode as an octal string, e.g. \"0660\""
        ))),
    }
}

/// The gid of group `name` (from the system's group database), or `name` itself when it is
/// a number.
pub fn group_id(name: &str) -> Result<u32, Error> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(Error::new(
            Code::BadRequest,
            format!("socket_group {name:?}: no such group"),
        )),
        Err(e) => Err(Error::new(
            Code::Internal,
            format!("socket_group {name:?}: cannot read the group database: {e}"),
        )),
    }
}

/// Binds the socket with `access`'s mode and group. It is created owner-only (the umask is
/// set around bind), then given its group, then its mode, so at no moment is it open to
/// more than asked. A socket file left by a dead daemon is replaced; one that answers is
/// another daemon, and is refused.
pub(super) fn bind(path: &Path, access: &SocketAccess) -> Result<OwnedFd, Error> {
    match socket_owner(path) {
        SocketOwner::Nobody => {}
        SocketOwner::Daemon => {
            return Err(Error::new(
                Code::Exists,
                format!(
                    "{} is in use by a running daemon; stop it first or pick another --socket",
                    path.display()
                ),
            ));
        }
        SocketOwner::Silent => {
            return Err(Error::new(
                Code::Exists,
                format!(
                    "{} accepts connections but does not answer; something else owns it, or a daemon there \
                     is stuck: stop it first or pick another --socket",
                    path.display()
                ),
            ));
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
            std::fs::remove_file(path)
                .map_err(|e| Error::io("remove the stale socket", path, e))?;
        }
        Ok(_) => {
            return Err(Error::new(
                Code::Exists,
                format!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                ),
            ));
        }
        Err(_) => {}
    }
    let old = rustix::process::umask(Mode::from_raw_mode(0o177));
    let bound = std::os::unix::net::UnixListener::bind(path);
    rustix::process::umask(old);
    let listener = bound.map_err(|e| Error::io("listen on", path, e))?;
    if let Err(err) = access.apply(path) {
        let _ = std::fs::remove_file(path);
        return Err(err);
    }
    Ok(OwnedFd::from(listener))
}

/// Whether another daemon owns the socket at `path`.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum SocketOwner {
    /// Nothing accepts there (or it never existed): the file, if any, is stale.
    Nobody,
    /// A daemon answered `ping`.
    Daemon,
    /// Something accepts but does not answer.
    Silent,
}

/// Looks for a daemon at `path` for up to 5 s. After a crash the kernel may keep the dead
/// daemon's listening socket for a moment (an io_uring accept holds it until the ring is torn
/// down): it accepts but never answers, then refuses. A live daemon answers `ping`.
pub(super) fn socket_owner(path: &Path) -> SocketOwner {
    use std::io::{BufRead, BufReader};
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let Ok(mut stream) = std::os::unix::net::UnixStream::connect(path) else {
            return SocketOwner::Nobody;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let _ = stream.set_write_timeout(Some(Duration::from_millis(500)));
        let mut line = String::new();
        if stream.write_all(b"{\"op\":\"ping\"}\n").is_ok()
            && BufReader::new(stream).read_line(&mut line).is_ok()
            && line.contains("\"pong\"")
        {
            return SocketOwner::Daemon;
        }
        if Instant::now() >= deadline {
            return SocketOwner::Silent;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_octal_and_at_most_0777() {
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert_eq!(parse_mode("600"), Ok(0o600));
        assert_eq!(parse_mode("0o666"), Ok(0o666));
        for bad in ["", "0o", "0899", "1777", "rw-rw----", "-1"] {
            assert!(parse_mode(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_bound_socket_has_the_mode_and_group_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        // The daemon's own primary group: always one it may give its files to.
        let gid = rustix::process::getegid().as_raw();
        let access = SocketAccess::resolve(Some(0o600), Some(&gid.to_string())).unwrap();
        let fd = bind(&path, &access).unwrap();
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(meta.gid(), gid);
        drop(fd);
        assert!(group_id("no-such-group-ringcrypt").is_err());
    }
}
