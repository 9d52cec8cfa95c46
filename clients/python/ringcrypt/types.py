"""The typed replies of the ringcrypt client, read from the daemon's JSON reply lines
(docs/protocol.md, "Replies"). Fields the daemon adds in later versions are ignored, as the
protocol asks."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

from ._wire import raise_error

__all__ = [
    "Pong",
    "FileResult",
    "Progress",
    "Failure",
    "Skipped",
    "TreeSummary",
    "TreeEvent",
    "JobStatus",
    "ShardStats",
    "KeyInfo",
    "KeyRing",
]


@dataclass(frozen=True)
class Pong:
    """``ping``'s answer: the daemon's version, its shard count and IO backend."""

    version: str
    shards: int
    backend: str


@dataclass(frozen=True)
class FileResult:
    """One file's job that succeeded: ``output`` exists, complete, under its name (or, with
    ``skipped``, already existed and verified)."""

    op: str
    input: str
    output: str
    job: str
    bytes_in: int
    bytes_out: int
    micros: int
    skipped: bool = False


@dataclass(frozen=True)
class Progress:
    """A tree's progress, at most every 200 ms. Totals grow until ``totals_final``."""

    job: str
    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    rate_bytes_per_sec: int
    totals_final: bool


@dataclass(frozen=True)
class Failure:
    """A file (or directory) of a tree that failed, with the error code and message."""

    path: str
    code: str
    message: str


@dataclass(frozen=True)
class Skipped:
    """An entry of a tree that was skipped, and why (``"symbolic link"``, ``"fifo"``, ...)."""

    path: str
    reason: str


@dataclass(frozen=True)
class TreeSummary:
    """The end of a tree: counts, and the first 100 failures and skipped entries (the
    ``*_omitted`` fields count the rest). ``ok`` is true when no file failed."""

    job: str
    bytes_in: int
    bytes_out: int
    micros: int
    files_ok: int
    files_failed: int
    files_skipped: int
    failures: List[Failure] = field(default_factory=list)
    skipped: List[Skipped] = field(default_factory=list)
    failures_omitted: int = 0
    skipped_omitted: int = 0

    @property
    def ok(self) -> bool:
        return self.files_failed == 0


TreeEvent = Union[Progress, TreeSummary]


@dataclass(frozen=True)
class JobStatus:
    """A job as ``status`` and ``jobs`` describe it. ``state`` is ``queued``, ``running``,
    ``done``, ``failed`` or ``cancelled``."""

    job: str
    state: str
    op: str
    input: str
    output: str
    bytes_done: int
    bytes_total: int


@dataclass(frozen=True)
class ShardStats:
    """One shard's counters since the daemon started."""

    shard: int
    queued: int
    running: int
    jobs_done: int
    bytes_in: int
    bytes_out: int


@dataclass(frozen=True)
class KeyInfo:
    """A key ring entry: never its secret. ``id`` is None for a passphrase entry."""

    name: str
    id: Optional[str]
    kind: str
    state: str


@dataclass(frozen=True)
class KeyRing:
    """The daemon's key ring: its default key's name (or None) and its entries in order."""

    default: Optional[str]
    keys: List[KeyInfo]


def pong(reply: Dict[str, Any]) -> Pong:
    return Pong(str(reply["version"]), int(reply["shards"]), str(reply["backend"]))


def progress(reply: Dict[str, Any]) -> Progress:
    return Progress(
        job=str(reply["job"]),
        files_done=int(reply["files_done"]),
        files_total=int(reply["files_total"]),
        bytes_done=int(reply["bytes_done"]),
        bytes_total=int(reply["bytes_total"]),
        rate_bytes_per_sec=int(reply["rate_bytes_per_sec"]),
        totals_final=bool(reply["totals_final"]),
    )


def file_done(op: str, input: str, output: str, job: bytes, counts: Sequence[bytes]) -> FileResult:
    """A success read by a reply pattern: the job id and ``bytes_in``, ``bytes_out`` and
    ``micros`` as the line's digits."""
    return FileResult(op, input, output, job.decode(), int(counts[0]), int(counts[1]), int(counts[2]))


def file_result(op: str, input: str, output: str, reply: Dict[str, Any]) -> FileResult:
    return FileResult(
        op=op,
        input=input,
        output=output,
        job=str(reply["job"]),
        bytes_in=int(reply["bytes_in"]),
        bytes_out=int(reply["bytes_out"]),
        micros=int(reply["micros"]),
        skipped=int(reply.get("files_skipped", 0)) > 0 and int(reply.get("files_ok", 1)) == 0,
    )


def tree_summary(reply: Dict[str, Any]) -> TreeSummary:
    return TreeSummary(
        job=str(reply["job"]),
        bytes_in=int(reply["bytes_in"]),
        bytes_out=int(reply["bytes_out"]),
        micros=int(reply["micros"]),
        files_ok=int(reply["files_ok"]),
        files_failed=int(reply["files_failed"]),
        files_skipped=int(reply["files_skipped"]),
        failures=[
            Failure(str(f["path"]), str(f["code"]), str(f["message"]))
            for f in reply.get("failures", [])
        ],
        skipped=[Skipped(str(s["path"]), str(s["reason"])) for s in reply.get("skipped", [])],
        failures_omitted=int(reply.get("failures_omitted", 0)),
        skipped_omitted=int(reply.get("skipped_omitted", 0)),
    )


def job_status(reply: Dict[str, Any]) -> JobStatus:
    progress = reply.get("progress") or {}
    return JobStatus(
        job=str(reply["job"]),
        state=str(reply["state"]),
        op=str(reply.get("op", "")),
        input=str(reply.get("input", "")),
        output=str(reply.get("output", "")),
        bytes_done=int(progress.get("bytes_done", 0)),
        bytes_total=int(progress.get("bytes_total", 0)),
    )


def shard_stats(reply: Dict[str, Any]) -> List[ShardStats]:
    return [
        ShardStats(
            shard=int(s["shard"]),
            queued=int(s["queued"]),
            running=int(s["running"]),
            jobs_done=int(s["jobs_done"]),
            bytes_in=int(s["bytes_in"]),
            bytes_out=int(s["bytes_out"]),
        )
        for s in reply["shards"]
    ]


def key_ring(reply: Dict[str, Any]) -> KeyRing:
    return KeyRing(
        default=reply.get("default"),
        keys=[
            KeyInfo(str(k["name"]), k.get("id"), str(k["kind"]), str(k["state"]))
            for k in reply["keys"]
        ],
    )


def tree_event(reply: Dict[str, Any], job: str) -> Optional[TreeEvent]:
    """A tree's reply line as the event it is (None for a line that is none); an ``error``
    raises."""
    kind = reply["type"]
    if kind == "progress":
        return progress(reply)
    if kind == "done":
        return tree_summary(reply)
    if kind == "error":
        raise_error(reply, job)
    return None
