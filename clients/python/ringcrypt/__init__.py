"""ringcrypt: a client for ``ringcryptd``, the ringcrypt file-encryption daemon.

Standard library only. :class:`Client` (blocking, thread-safe) and :class:`AsyncClient`
(asyncio) have the same methods: ``encrypt``, ``decrypt`` and ``rewrap`` for one file (or,
with ``tree=True``, a directory tree with progress events and a summary), ``map_files`` for
many files at once, and ``ping``, ``status``, ``cancel``, ``jobs``, ``stats``, ``keys``.
Errors are exceptions, one class per protocol error code, under :class:`RingcryptError`.
See docs/python.md in the ringcrypt repository.
"""

from typing import TYPE_CHECKING, Any

from .client import Client, TreeJob
from .errors import (
    AuthFailed,
    BadFormat,
    BadRequest,
    Busy,
    Cancelled,
    DaemonUnavailable,
    Exists,
    ForbiddenPath,
    Internal,
    PartitionMismatch,
    IoError,
    KeyRetired,
    NoSpace,
    NotFound,
    PermissionDenied,
    RingcryptError,
    ShuttingDown,
    Timeout,
    TooLarge,
    UnknownKey,
    UnknownOp,
)
from .types import (
    Failure,
    FileResult,
    JobStatus,
    KeyInfo,
    KeyRing,
    Pong,
    Progress,
    ShardStats,
    Skipped,
    TreeEvent,
    TreeSummary,
)

if TYPE_CHECKING:
    from .aio import AsyncClient, AsyncTreeJob

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The asyncio client is imported on first use: asyncio alone takes longer to import than
    # the rest of the package, and a blocking script never needs it.
    if name in ("AsyncClient", "AsyncTreeJob"):
        from . import aio

        return getattr(aio, name)
    raise AttributeError(f"module 'ringcrypt' has no attribute {name!r}")


__all__ = [
    "AsyncClient",
    "AsyncTreeJob",
    "Client",
    "TreeJob",
    "RingcryptError",
    "DaemonUnavailable",
    "AuthFailed",
    "BadFormat",
    "BadRequest",
    "Busy",
    "Cancelled",
    "Exists",
    "ForbiddenPath",
    "Internal",
    "PartitionMismatch",
    "IoError",
    "KeyRetired",
    "NoSpace",
    "NotFound",
    "PermissionDenied",
    "ShuttingDown",
    "Timeout",
    "TooLarge",
    "UnknownKey",
    "UnknownOp",
    "Failure",
    "FileResult",
    "JobStatus",
    "KeyInfo",
    "KeyRing",
    "Pong",
    "Progress",
    "ShardStats",
    "Skipped",
    "TreeEvent",
    "TreeSummary",
]
