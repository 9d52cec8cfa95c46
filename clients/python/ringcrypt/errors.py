"""The exceptions of the ringcrypt client: one class per error code of the protocol
(docs/protocol.md, "Error codes"), all under :class:`RingcryptError`, plus
:class:`DaemonUnavailable` for a daemon that cannot be reached or that dropped the connection.

Every exception carries the daemon's ``message`` (for people) and its ``code`` (to match on);
errors found by this process before or after the daemon's work (an input that cannot be
opened, an output that already exists when it is linked) use the class of the code the daemon
would have sent for the same problem.
"""

import errno
from typing import Any, Dict, Optional, Tuple, Type

__all__ = [
    "RingcryptError",
    "DaemonUnavailable",
    "BadRequest",
    "UnknownOp",
    "TooLarge",
    "NotFound",
    "PermissionDenied",
    "ForbiddenPath",
    "Exists",
    "AuthFailed",
    "UnknownKey",
    "KeyRetired",
    "BadFormat",
    "Busy",
    "Timeout",
    "Cancelled",
    "IoError",
    "NoSpace",
    "ShuttingDown",
    "Internal",
    "PartitionMismatch",
    "error_for",
    "from_os_error",
]


class RingcryptError(Exception):
    """A request that did not succeed. ``code`` is the protocol's error code (a code this
    version does not know keeps its spelling here), ``message`` the daemon's words, and
    ``job`` the job id when the daemon had accepted the job."""

    code: str = "error"

    def __init__(self, message: str, *, code: Optional[str] = None, job: Optional[str] = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.job = job

    def __str__(self) -> str:
        return f"{self.message} [{self.code}]"

    def __reduce__(self) -> Tuple[Any, Tuple[Any, ...]]:  # keeps code and job across pickling
        return (_rebuild, (type(self), self.message, self.code, self.job))


def _rebuild(
    cls: Type["RingcryptError"], message: str, code: str, job: Optional[str]
) -> "RingcryptError":
    return cls(message, code=code, job=job)


class DaemonUnavailable(RingcryptError):
    """The daemon could not be reached (no socket, nobody listening, no permission), or the
    connection broke before the request's final reply: the daemon stopped or was killed.
    A job that was running may or may not have finished; its output, if any, is complete or
    absent, never partial."""

    code = "unavailable"


class BadRequest(RingcryptError):
    code = "bad_request"


class UnknownOp(RingcryptError):
    code = "unknown_op"


class TooLarge(RingcryptError):
    code = "too_large"


class NotFound(RingcryptError):
    code = "not_found"


class PermissionDenied(RingcryptError):
    code = "permission_denied"


class ForbiddenPath(RingcryptError):
    code = "forbidden_path"


class Exists(RingcryptError):
    code = "exists"


class AuthFailed(RingcryptError):
    code = "auth_failed"


class UnknownKey(RingcryptError):
    code = "unknown_key"


class KeyRetired(RingcryptError):
    code = "key_retired"


class BadFormat(RingcryptError):
    code = "bad_format"


class Busy(RingcryptError):
    code = "busy"


class Timeout(RingcryptError):
    """The call's ``timeout`` ran out (or the daemon sent the code ``timeout``). The client
    cancels a job it had started before raising this."""

    code = "timeout"


class Cancelled(RingcryptError):
    code = "cancelled"


class IoError(RingcryptError):
    code = "io_error"


class NoSpace(RingcryptError):
    code = "no_space"


class ShuttingDown(RingcryptError):
    code = "shutting_down"


class Internal(RingcryptError):
    code = "internal"


class PartitionMismatch(RingcryptError):
    """A tree run with ``partition`` I/N whose output root already belongs to a run over
    another N (docs/fleet.md)."""

    code = "partition_mismatch"


_BY_CODE: Dict[str, Type[RingcryptError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        UnknownOp,
        TooLarge,
        NotFound,
        PermissionDenied,
        ForbiddenPath,
        Exists,
        AuthFailed,
        UnknownKey,
        KeyRetired,
        BadFormat,
        Busy,
        Timeout,
        Cancelled,
        IoError,
        NoSpace,
        ShuttingDown,
        Internal,
        PartitionMismatch,
    )
}


def error_for(code: str, message: str, job: Optional[str] = None) -> RingcryptError:
    """The exception for an ``error`` reply; an unknown code is a plain RingcryptError."""
    cls = _BY_CODE.get(code, RingcryptError)
    return cls(message, code=code, job=job)


def from_os_error(what: str, path: str, err: OSError) -> RingcryptError:
    """An OS error of this process (opening the input, linking the output) as the class of
    the code the daemon uses for it, naming the file."""
    code = {
        errno.ENOENT: "not_found",
        errno.EACCES: "permission_denied",
        errno.EPERM: "permission_denied",
        errno.EEXIST: "exists",
        errno.ENOSPC: "no_space",
        errno.EDQUOT: "no_space",
        errno.EISDIR: "bad_request",
    }.get(err.errno or 0, "io_error")
    if code == "exists":
        message = f"{path} already exists; choose another output or pass overwrite=True"
    elif code == "bad_request":
        message = f"{path} is a directory; pass tree=True for a directory"
    else:
        message = f"cannot {what} {path}: {err.strerror or err}"
    exc = error_for(code, message)
    exc.__cause__ = err
    return exc
