"""The blocking client: :class:`Client`, and :class:`TreeJob` for a directory tree."""

import itertools
import threading
import time
from typing import Any, Dict, Iterable, Iterator, List, Literal, Optional, Sequence, Union, overload


from . import types as t
from ._jobs import FileCall, PathArg, absolute, default_output, simple_line
from ._wire import SHORT_TIMEOUT, Conn, Deadline, Waiter, is_ours, raise_error, socket_path
from .batch import BatchItem, run_batch
from .errors import RingcryptError, Timeout

Result = Union[t.FileResult, RingcryptError]
# Idle connections a client keeps for its next calls.
MAX_IDLE_CONNECTIONS = 8


class Client:
    """A client of ``ringcryptd`` on ``socket`` (default ``$RINGCRYPT_SOCKET``, then
    ``/run/ringcrypt/ringcrypt.sock``, as the CLI). Safe to share between threads: each call
    takes a connection of its own from a small pool and returns it when it ends.

    Single files go to the daemon as descriptors this process opened, so the caller's own
    permissions apply and no allowed root is needed; trees go by path. Every method takes a
    ``timeout`` in seconds; a job still running when it runs out is cancelled and
    :class:`~ringcrypt.Timeout` is raised."""

    def __init__(self, socket: Optional[PathArg] = None) -> None:
        self.socket = socket_path(socket)
        self._idle: List[Conn] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    # -- connections -----------------------------------------------------------------
    def _take(self) -> Conn:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return Conn(self.socket)
            if conn.reusable():
                return conn
            conn.close()

    def _give_back(self, conn: Conn) -> None:
        conn.idle_since = time.monotonic()
        with self._lock:
            if len(self._idle) < MAX_IDLE_CONNECTIONS:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Closes the idle connections (a running :class:`TreeJob` keeps its own)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _next_id(self) -> int:
        return next(self._ids)

    # -- requests with one reply -----------------------------------------------------------
    def _call(self, op: str, timeout: Optional[float], **fields: Any) -> Dict[str, Any]:
        deadline = Deadline(timeout, op)
        waiter = Waiter(self._next_id())
        conn = self._take()
        try:
            conn.send(simple_line(waiter.req_id, op, **fields), (), deadline)
            while True:
                reply = conn.read(deadline)
                if waiter.final(reply):
                    break
        except BaseException:
            conn.close()
            raise
        self._give_back(conn)
        return waiter.outcome(reply)

    def ping(self, *, timeout: Optional[float] = SHORT_TIMEOUT) -> t.Pong:
        """The daemon's version, shard count and IO backend."""
        return t.pong(self._call("ping", timeout))

    def status(self, job: str, *, timeout: Optional[float] = SHORT_TIMEOUT) -> t.JobStatus:
        """One job's state and progress (``NotFound`` for a job the daemon does not know)."""
        return t.job_status(self._call("status", timeout, job=job))

    def cancel(self, job: str, *, timeout: Optional[float] = SHORT_TIMEOUT) -> None:
        """Cancels a queued or running job, or a tree's walk (``NotFound`` if it ended)."""
        self._call("cancel", timeout, job=job)

    def jobs(self, *, timeout: Optional[float] = SHORT_TIMEOUT) -> List[t.JobStatus]:
        """Every job the daemon knows: running, queued and recently ended, in no order."""
        return [t.job_status(j) for j in self._call("jobs", timeout)["jobs"]]

    def stats(self, *, timeout: Optional[float] = SHORT_TIMEOUT) -> List[t.ShardStats]:
        """Per-shard counters, in shard order."""
        return t.shard_stats(self._call("stats", timeout))

    def keys(self, *, timeout: Optional[float] = SHORT_TIMEOUT) -> t.KeyRing:
        """The key ring's default and entries (names, ids, kinds, states; never secrets)."""
        return t.key_ring(self._call("keys", timeout))

    # -- file jobs -----------------------------------------------------------------------
    @overload
    def encrypt(
        self,
        input: PathArg,
        output: Optional[PathArg] = ...,
        *,
        key: Optional[str] = ...,
        overwrite: bool = ...,
        tree: Literal[False] = ...,
        skip_existing: bool = ...,
        timeout: Optional[float] = ...,
    ) -> t.FileResult: ...

    @overload
    def encrypt(
        self,
        input: PathArg,
        output: Optional[PathArg] = ...,
        *,
        key: Optional[str] = ...,
        overwrite: bool = ...,
        tree: Literal[True],
        skip_existing: bool = ...,
        timeout: Optional[float] = ...,
    ) -> "TreeJob": ...

    def encrypt(
        self,
        input: PathArg,
        output: Optional[PathArg] = None,
        *,
        key: Optional[str] = None,
        overwrite: bool = False,
        tree: bool = False,
        skip_existing: bool = False,
        timeout: Optional[float] = None,
    ) -> Union[t.FileResult, "TreeJob"]:
        """Seals ``input`` into ``output`` (default ``INPUT.rcrypt``) under ``key`` (default:
        the ring's default). With ``tree=True`` both are directories, and a
        :class:`TreeJob` yields the tree's progress and its summary."""
        return self._file(
            FileCall(self._ids, "encrypt", input, output, key, overwrite, False, tree, skip_existing, timeout)
        )

    @overload
    def decrypt(
        self,
        input: PathArg,
        output: Optional[PathArg] = ...,
        *,
        overwrite: bool = ...,
        tree: Literal[False] = ...,
        skip_existing: bool = ...,
        timeout: Optional[float] = ...,
    ) -> t.FileResult: ...

    @overload
    def decrypt(
        self,
        input: PathArg,
        output: Optional[PathArg] = ...,
        *,
        overwrite: bool = ...,
        tree: Literal[True],
        skip_existing: bool = ...,
        timeout: Optional[float] = ...,
    ) -> "TreeJob": ...

    def decrypt(
        self,
        input: PathArg,
        output: Optional[PathArg] = None,
        *,
        overwrite: bool = False,
        tree: bool = False,
        skip_existing: bool = False,
        timeout: Optional[float] = None,
    ) -> Union[t.FileResult, "TreeJob"]:
        """Verifies and opens ``input`` into ``output`` (default: ``input`` without
        ``.rcrypt``). Nothing appears unless every chunk verified."""
        return self._file(
            FileCall(self._ids, "decrypt", input, output, None, overwrite, False, tree, skip_existing, timeout)
        )

    @overload
    def rewrap(
        self,
        input: PathArg,
        output: Optional[PathArg] = ...,
        *,
        in_place: bool = ...,
        overwrite: bool = ...,
        tree: Literal[False] = ...,
        skip_existing: bool = ...,
        timeout: Optional[float] = ...,
    ) -> t.FileResult: ...

    @overload
    def rewrap(
        self,
        input: PathArg,
        output: Optional[PathArg] = ...,
        *,
        in_place: bool = ...,
        overwrite: bool = ...,
        tree: Literal[True],
        skip_existing: bool = ...,
        timeout: Optional[float] = ...,
    ) -> "TreeJob": ...

    def rewrap(
        self,
        input: PathArg,
        output: Optional[PathArg] = None,
        *,
        in_place: bool = False,
        overwrite: bool = False,
        tree: bool = False,
        skip_existing: bool = False,
        timeout: Optional[float] = None,
    ) -> Union[t.FileResult, "TreeJob"]:
        """Re-seals ``input`` under the ring's current default key, into ``output`` or, with
        ``in_place=True``, atomically over the input."""
        return self._file(
            FileCall(
                self._ids, "rewrap", input, output, None, overwrite or in_place, in_place, tree,
                skip_existing, timeout,
            )
        )

    def _file(self, call: FileCall) -> Union[t.FileResult, "TreeJob"]:
        deadline = Deadline(call.timeout, call.op)
        if call.tree:
            return TreeJob(self, call.req_id, call.line, deadline)
        try:
            return call.result(self._run_file(call, deadline))
        finally:
            call.close()

    def _run_file(self, call: FileCall, deadline: Deadline) -> Dict[str, Any]:
        conn = self._take()
        waiter = Waiter(call.req_id)
        try:
            conn.send(call.line, call.fds(), deadline)
            call.sent()
            while True:
                reply = conn.read(deadline)
                if waiter.final(reply):
                    break
        except Timeout:
            self._cancel_quietly(conn, waiter.job)
            conn.close()
            raise deadline.expired(waiter.job) from None
        except BaseException:
            conn.close()
            raise
        self._give_back(conn)
        return waiter.outcome(reply)

    def _cancel_quietly(self, conn: Conn, job: Optional[str]) -> None:
        """Best effort, on the connection the job was started on, bounded to 1 s."""
        if job is None:
            return
        try:
            conn.send(simple_line(f"cancel-{job}", "cancel", job=job), (), Deadline(1.0, "cancel"))
        except RingcryptError:
            pass

    # -- many files --------------------------------------------------------------------------
    def map_files(
        self,
        op: str,
        paths: Iterable[PathArg],
        *,
        outputs: Optional[Sequence[PathArg]] = None,
        key: Optional[str] = None,
        overwrite: bool = False,
        in_place: bool = False,
        concurrency: int = 128,
        connections: int = 4,
        by_path: bool = False,
        fsync: bool = True,
        timeout: Optional[float] = None,
    ) -> List[Result]:
        """``op`` on every file of ``paths``, the drop-in for
        ``pool.map(encrypt_file, paths)``: up to ``concurrency`` requests in flight, pipelined
        over ``connections`` connections, results in the order of ``paths``. Each is a
        :class:`FileResult` or the exception for that file; one failure never stops the
        batch. ``timeout`` bounds each file from its request; ``fsync`` makes each output and
        its directory durable once linked; ``by_path`` sends paths instead of descriptors,
        hundreds to a request (the files must then lie under the daemon's allowed roots; a
        list in which no file ends within ``timeout`` is cancelled)."""
        items = plan_batch(op, paths, outputs, key, overwrite, in_place, by_path)
        return run_batch(self.socket, items, concurrency, connections, fsync, timeout)


def plan_batch(
    op: str,
    paths: Iterable[PathArg],
    outputs: Optional[Sequence[PathArg]],
    key: Optional[str],
    overwrite: bool,
    in_place: bool,
    by_path: bool,
) -> List[BatchItem]:
    """Every file's input and output, checked before anything is sent: a name that has no
    default output or a count of outputs that does not match fails the whole call at once."""
    inputs = [absolute(p) for p in paths]
    if outputs is not None:
        outs = list(outputs)
        if len(outs) != len(inputs):
            raise ValueError(f"{len(inputs)} paths but {len(outs)} outputs")
        dsts = [default_output(op, src, out, in_place) for src, out in zip(inputs, outs)]
    else:
        dsts = [default_output(op, src, None, in_place) for src in inputs]
    if key is not None and op != "encrypt":
        raise ValueError("key is for encrypt only: sealed files name their own key")
    return [
        BatchItem(op, src, dst, key, overwrite or in_place, in_place, by_path)
        for src, dst in zip(inputs, dsts)
    ]


class TreeJob:
    """A directory tree running in the daemon. Iterating yields :class:`Progress` events
    and, last, the :class:`TreeSummary`; a cancelled tree raises
    :class:`~ringcrypt.Cancelled`. ``job`` is the tree's id (for ``status`` and ``cancel``).
    Closing it (or leaving its ``with`` block) before the end leaves the tree running in the
    daemon; :meth:`cancel` stops it."""

    def __init__(self, client: Client, req_id: int, line: bytes, deadline: Deadline) -> None:
        self._client = client
        self._deadline = deadline
        self._conn: Optional[Conn] = Conn(client.socket)
        self._summary: Optional[t.TreeSummary] = None
        self._req_id = req_id
        self.job = ""
        try:
            self._conn.send(line, (), deadline)
            while True:
                reply = self._read()
                if reply["type"] == "accepted":
                    self.job = str(reply["job"])
                    break
                if reply["type"] == "error":
                    raise_error(reply)
        except BaseException:
            self.close()
            raise

    def _read(self) -> Dict[str, Any]:
        assert self._conn is not None
        while True:
            reply = self._conn.read(self._deadline)
            if is_ours(reply, self._req_id):
                return reply

    def __iter__(self) -> Iterator[t.TreeEvent]:
        if self._summary is not None:
            yield self._summary
            return
        if self._conn is None:
            raise RingcryptError("this tree's connection was closed", code="internal", job=self.job)
        try:
            while True:
                try:
                    reply = self._read()
                except Timeout:
                    self._client._cancel_quietly(self._conn, self.job)
                    raise self._deadline.expired(self.job) from None
                event = t.tree_event(reply, self.job)
                if isinstance(event, t.TreeSummary):
                    self._summary = event
                    yield event
                    return
                if event is not None:
                    yield event
        finally:
            self.close()

    def result(self) -> t.TreeSummary:
        """Waits for the end and returns the summary (progress events are dropped)."""
        for event in self:
            if isinstance(event, t.TreeSummary):
                return event
        raise RingcryptError("the tree ended without a summary", code="internal", job=self.job)

    def cancel(self, *, timeout: Optional[float] = SHORT_TIMEOUT) -> None:
        """Stops the walk; files already handed out finish; iterating then raises
        ``Cancelled``."""
        self._client.cancel(self.job, timeout=timeout)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "TreeJob":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

