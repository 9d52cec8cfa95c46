"""The asyncio client: :class:`AsyncClient`, with the same methods as :class:`Client`, each a
coroutine, and :class:`AsyncTreeJob` for a tree (``async for``). The sockets are non-blocking
and driven by the running loop; descriptors go with ``sendmsg`` as in the blocking client.
A task cancelled while its job runs cancels the job too (best effort) and links nothing."""

import asyncio
import itertools
import socket
import time
from typing import (
    Any,
    AsyncIterator,
    Dict,
    Iterable,
    List,
    Literal,
    Optional,
    Sequence,
    Union,
    overload,
)

from . import types as t
from ._jobs import FileCall, PathArg, simple_line
from ._wire import (
    CONNECT_TIMEOUT,
    RECV_BYTES,
    SHORT_TIMEOUT,
    LineSocket,
    Waiter,
    dropped,
    is_ours,
    raise_error,
    scm_rights,
    socket_path,
    timed_out,
    unavailable,
)
from .batch import run_batch
from .client import MAX_IDLE_CONNECTIONS, plan_batch
from .errors import RingcryptError, Timeout

Result = Union[t.FileResult, RingcryptError]


class _AConn(LineSocket):
    """One non-blocking connection on the running loop."""

    @classmethod
    async def open(cls, path: str) -> "_AConn":
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, path), CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as err:
            sock.close()
            raise unavailable(path, err) from err
        except BaseException:
            sock.close()
            raise
        return cls(path, sock)

    async def send(self, line: bytes, fds: Sequence[int], what: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            sent = 0
            if fds:
                while True:
                    try:
                        sent = self.sock.sendmsg([line], scm_rights(fds))
                        break
                    except BlockingIOError:
                        await self._writable(loop)
            if sent < len(line):
                await loop.sock_sendall(self.sock, line[sent:])
        except OSError as err:
            raise dropped(self.path, what, err) from err

    async def _writable(self, loop: asyncio.AbstractEventLoop) -> None:
        ready = loop.create_future()
        fd = self.sock.fileno()
        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_writer(fd, wake)
        try:
            await ready
        finally:
            loop.remove_writer(fd)

    async def read(self, what: str) -> Dict[str, Any]:
        loop = asyncio.get_running_loop()
        while True:
            reply = self.next_line()
            if reply is not None:
                return reply
            try:
                chunk = await loop.sock_recv(self.sock, RECV_BYTES)
            except OSError as err:
                raise dropped(self.path, what, err) from err
            self.received(chunk, what)

    def cancel_nowait(self, job: Optional[str]) -> None:
        """Asks the daemon to cancel ``job`` without waiting: one small non-blocking send."""
        if job is None:
            return
        try:
            self.sock.send(simple_line(f"cancel-{job}", "cancel", job=job))
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()


async def _bounded(coro: Any, timeout: Optional[float]) -> Any:
    if timeout is None:
        return await coro
    if timeout < 0:
        raise ValueError("timeout must be None or at least 0")
    return await asyncio.wait_for(coro, timeout)


class AsyncClient:
    """:class:`Client` for asyncio: the same methods and arguments, as coroutines."""

    def __init__(self, socket: Optional[PathArg] = None) -> None:
        self.socket = socket_path(socket)
        self._idle: List[_AConn] = []
        self._ids = itertools.count(1)

    async def _take(self) -> _AConn:
        while self._idle:
            conn = self._idle.pop()
            if conn.reusable():
                return conn
            conn.close()
        return await _AConn.open(self.socket)

    def _give_back(self, conn: _AConn) -> None:
        conn.idle_since = time.monotonic()
        if len(self._idle) < MAX_IDLE_CONNECTIONS:
            self._idle.append(conn)
        else:
            conn.close()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _exchange(
        self,
        line: bytes,
        req_id: Any,
        what: str,
        timeout: Optional[float],
        call: Optional[FileCall] = None,
    ) -> Dict[str, Any]:
        """Sends one request (with ``call``'s descriptors) and returns its final reply line
        (``done`` or any one-line reply); an ``error`` is raised. A timeout or a cancelled
        task cancels the job."""
        conn = await self._take()
        waiter = Waiter(req_id)

        async def talk() -> Dict[str, Any]:
            await conn.send(line, call.fds() if call is not None else (), what)
            if call is not None:
                call.sent()
            while True:
                reply = await conn.read(what)
                if waiter.final(reply):
                    return reply

        try:
            reply: Dict[str, Any] = await _bounded(talk(), timeout)
        except asyncio.TimeoutError:
            conn.cancel_nowait(waiter.job)
            conn.close()
            raise timed_out(what, timeout, waiter.job) from None
        except BaseException:
            conn.cancel_nowait(waiter.job)
            conn.close()
            raise
        self._give_back(conn)
        return waiter.outcome(reply)

    async def _call(self, op: str, timeout: Optional[float], **fields: Any) -> Dict[str, Any]:
        req_id = next(self._ids)
        return await self._exchange(simple_line(req_id, op, **fields), req_id, op, timeout)

    async def ping(self, *, timeout: Optional[float] = SHORT_TIMEOUT) -> t.Pong:
        return t.pong(await self._call("ping", timeout))

    async def status(self, job: str, *, timeout: Optional[float] = SHORT_TIMEOUT) -> t.JobStatus:
        return t.job_status(await self._call("status", timeout, job=job))

    async def cancel(self, job: str, *, timeout: Optional[float] = SHORT_TIMEOUT) -> None:
        await self._call("cancel", timeout, job=job)

    async def jobs(self, *, timeout: Optional[float] = SHORT_TIMEOUT) -> List[t.JobStatus]:
        return [t.job_status(j) for j in (await self._call("jobs", timeout))["jobs"]]

    async def stats(self, *, timeout: Optional[float] = SHORT_TIMEOUT) -> List[t.ShardStats]:
        return t.shard_stats(await self._call("stats", timeout))

    async def keys(self, *, timeout: Optional[float] = SHORT_TIMEOUT) -> t.KeyRing:
        return t.key_ring(await self._call("keys", timeout))

    @overload
    async def encrypt(
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
    async def encrypt(
        self,
        input: PathArg,
        output: Optional[PathArg] = ...,
        *,
        key: Optional[str] = ...,
        overwrite: bool = ...,
        tree: Literal[True],
        skip_existing: bool = ...,
        timeout: Optional[float] = ...,
    ) -> "AsyncTreeJob": ...

    async def encrypt(
        self,
        input: PathArg,
        output: Optional[PathArg] = None,
        *,
        key: Optional[str] = None,
        overwrite: bool = False,
        tree: bool = False,
        skip_existing: bool = False,
        timeout: Optional[float] = None,
    ) -> Union[t.FileResult, "AsyncTreeJob"]:
        """As :meth:`Client.encrypt`; with ``tree=True`` an :class:`AsyncTreeJob`."""
        return await self._file(
            FileCall(self._ids, "encrypt", input, output, key, overwrite, False, tree, skip_existing, timeout)
        )

    @overload
    async def decrypt(
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
    async def decrypt(
        self,
        input: PathArg,
        output: Optional[PathArg] = ...,
        *,
        overwrite: bool = ...,
        tree: Literal[True],
        skip_existing: bool = ...,
        timeout: Optional[float] = ...,
    ) -> "AsyncTreeJob": ...

    async def decrypt(
        self,
        input: PathArg,
        output: Optional[PathArg] = None,
        *,
        overwrite: bool = False,
        tree: bool = False,
        skip_existing: bool = False,
        timeout: Optional[float] = None,
    ) -> Union[t.FileResult, "AsyncTreeJob"]:
        """As :meth:`Client.decrypt`."""
        return await self._file(
            FileCall(self._ids, "decrypt", input, output, None, overwrite, False, tree, skip_existing, timeout)
        )

    @overload
    async def rewrap(
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
    async def rewrap(
        self,
        input: PathArg,
        output: Optional[PathArg] = ...,
        *,
        in_place: bool = ...,
        overwrite: bool = ...,
        tree: Literal[True],
        skip_existing: bool = ...,
        timeout: Optional[float] = ...,
    ) -> "AsyncTreeJob": ...

    async def rewrap(
        self,
        input: PathArg,
        output: Optional[PathArg] = None,
        *,
        in_place: bool = False,
        overwrite: bool = False,
        tree: bool = False,
        skip_existing: bool = False,
        timeout: Optional[float] = None,
    ) -> Union[t.FileResult, "AsyncTreeJob"]:
        """As :meth:`Client.rewrap`."""
        return await self._file(
            FileCall(
                self._ids, "rewrap", input, output, None, overwrite or in_place, in_place, tree,
                skip_existing, timeout,
            )
        )

    async def _file(self, call: FileCall) -> Union[t.FileResult, "AsyncTreeJob"]:
        if call.tree:
            job = AsyncTreeJob(self, call.req_id, call.timeout)
            await job._start(call.line)
            return job
        try:
            return call.result(
                await self._exchange(call.line, call.req_id, call.op, call.timeout, call)
            )
        finally:
            call.close()

    async def map_files(
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
        """As :meth:`Client.map_files`. The batch runs on a worker thread with its own
        connections, so the loop stays free while it runs."""
        items = plan_batch(op, paths, outputs, key, overwrite, in_place, by_path)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None, run_batch, self.socket, items, concurrency, connections, fsync, timeout
        )


class AsyncTreeJob:
    """:class:`TreeJob` for asyncio: ``async for event in job`` yields :class:`Progress`
    events and, last, the :class:`TreeSummary`."""

    def __init__(self, client: AsyncClient, req_id: int, timeout: Optional[float]) -> None:
        self._client = client
        self._req_id = req_id
        self._timeout = timeout
        self._conn: Optional[_AConn] = None
        self._summary: Optional[t.TreeSummary] = None
        self._end: Optional[float] = None
        self.job = ""

    async def _start(self, line: bytes) -> None:
        loop = asyncio.get_running_loop()
        if self._timeout is not None:
            self._end = loop.time() + self._timeout
        self._conn = await _AConn.open(self._client.socket)
        try:
            await self._conn.send(line, (), "tree")
            while True:
                reply = await self._read()
                if reply["type"] == "accepted":
                    self.job = str(reply["job"])
                    return
                if reply["type"] == "error":
                    raise_error(reply)
        except BaseException:
            self.close()
            raise

    async def _read(self) -> Dict[str, Any]:
        assert self._conn is not None
        left = None
        if self._end is not None:
            left = max(0.0, self._end - asyncio.get_running_loop().time())
        try:
            while True:
                reply: Dict[str, Any] = await _bounded(self._conn.read("tree"), left)
                if is_ours(reply, self._req_id):
                    return reply
        except asyncio.TimeoutError:
            self._conn.cancel_nowait(self.job or None)
            raise Timeout(
                f"the tree did not end within {self._timeout} s"
                + (f"; job {self.job} was cancelled" if self.job else ""),
                job=self.job or None,
            ) from None

    async def __aiter__(self) -> AsyncIterator[t.TreeEvent]:
        if self._summary is not None:
            yield self._summary
            return
        if self._conn is None:
            raise RingcryptError("this tree's connection was closed", code="internal", job=self.job)
        try:
            while True:
                event = t.tree_event(await self._read(), self.job)
                if isinstance(event, t.TreeSummary):
                    self._summary = event
                    yield event
                    return
                if event is not None:
                    yield event
        finally:
            self.close()

    async def result(self) -> t.TreeSummary:
        async for event in self:
            if isinstance(event, t.TreeSummary):
                return event
        raise RingcryptError("the tree ended without a summary", code="internal", job=self.job)

    async def cancel(self, *, timeout: Optional[float] = SHORT_TIMEOUT) -> None:
        await self._client.cancel(self.job, timeout=timeout)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
