//! Who may do what: the verdict on each request from the caller's identity (and on what
//! the daemon never does for anyone).
//!
//! What this room does not do: learn who the caller is (`creds`, at accept), act on the
//! verdict (the shard's `on_line` does) or log it (`audit` does).

use crate::daemon::creds::Caller;
use crate::error::{Code, Error};
use crate::protocol::{Format, Request};

use super::Shared;

/// Whether `caller` may have `request` done: `Err` with the refusal to send otherwise.
/// A caller off the allow lists gets only `ping`; `reload` is for root and the daemon's
/// uid; a path job of another caller needs a daemon that can act as that caller (or the
/// operator's choice of the daemon's rights for everyone).
pub(super) fn verdict(
    shared: &Shared,
    caller: &Caller,
    refused_caller: bool,
    request: &Request,
) -> Result<(), Error> {
    let (uid, gid) = (caller.uid, caller.gid);
    // A file job's options: a single file's, or a batch's (whose files go by path).
    let file = match request {
        Request::File(spec) => Some(spec),
        Request::Batch(batch) => Some(&batch.spec),
        _ => None,
    };
    if let Some(spec) = file
        && spec.format == Format::Openssl
    {
        // Never silently write something else than what was asked: the daemon writes the
        // authenticated format only.
        return Err(Error::new(
            Code::BadRequest,
            "the daemon does not write the unauthenticated openssl format; use the offline \
             client (`ringcrypt --keys FILE encrypt --format openssl ...`), or leave out \
             \"format\" to seal in the ringcrypt format",
        ));
    }
    if refused_caller && !matches!(request, Request::Ping) {
        Err(Error::new(
            Code::PermissionDenied,
            format!(
                "uid {uid} (gid {gid}) may not use this daemon; ask its administrator to add it to allow_uids or allow_gids"
            ),
        ))
    } else if matches!(request, Request::Reload) && !caller.is_admin(shared.daemon_uid) {
        Err(Error::new(
            Code::PermissionDenied,
            "reload is an admin operation: it needs uid 0 or the daemon's uid",
        ))
    } else if let Some(spec) = file
        && !spec.fds
        && !caller.is_admin(shared.daemon_uid)
        && shared.act_as_callers
        && !shared.can_act_as
    {
        Err(Error::new(
            Code::PermissionDenied,
            format!(
                "this daemon cannot act with the credentials of uid {uid} (it runs without \
                     CAP_SETUID and CAP_SETGID), so it opens no paths for it; pass the files as \
                     descriptors (the ringcrypt client does for single files), or ask the \
                     administrator about path_credentials"
            ),
        ))
    } else {
        Ok(())
    }
}
