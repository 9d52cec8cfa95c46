"""``map_files(by_path=True)``' engine: the files go to the daemon as lists, many in one
request (``inputs`` and ``outputs``, docs/protocol.md "Batches"), and the daemon runs each
list the way it runs a tree's files, answering every file with its own ``file`` line.

The client then makes no call per file: one request line carries hundreds of paths, and the
daemon holds its ``file`` lines back to send them many at a time. Up to ``connections`` lists
are in flight, one per connection; each is at most :data:`LIST_FILES` files and
:data:`LIST_BYTES` of request line (the daemon takes lines up to 64 KiB).

Results come back in the order of the paths, each a :class:`~ringcrypt.FileResult` or the
exception for that file. A list whose connection breaks fails its unanswered files with
``DaemonUnavailable``; the rest go on over the other connections (or a new one). With a
``timeout``, a list that sees no file end for that long is cancelled, and its unanswered
files get :class:`~ringcrypt.Timeout`.
"""

import json
import re
import selectors
import time
from typing import Any, Dict, List, Optional, Union

from . import types as t
from ._jobs import simple_line, wire_name
from ._wire import SelectedConn, dropped
from .errors import BadRequest, RingcryptError, Timeout, error_for

Result = Union[t.FileResult, RingcryptError]

# Files in one request at most: enough that the client's cost per file is the paths'
# encoding alone, few enough that several lists keep every shard busy to the end.
LIST_FILES = 512
# The longest path the daemon takes, after normalization (docs/protocol.md, "Limits").
MAX_PATH_BYTES = 4095
# Bytes of one request line at most, under the daemon's 64 KiB limit with room for the
# fixed fields.
LIST_BYTES = 60_000
# A file's ``file`` line when it succeeded, as the daemon writes it: read without building
# a dict. Any other shape goes through json.loads.
_FILE_DONE = re.compile(
    rb'\{"type":"file","id":(\d+),"job":"([^"\\]*)","index":(\d+),"bytes_in":(\d+),'
    rb'"bytes_out":(\d+),"micros":(\d+)\}$'
)


# A name JSON writes unchanged: printable ASCII without quotes or backslashes.
_PLAIN = re.compile(r'[\x20\x21\x23-\x5b\x5d-\x7e]*')


def refuse_alone(field: str, name: str) -> None:
    """Raises the daemon's ``bad_request`` for a path it would refuse while reading the request
    (docs/protocol.md, "Paths"), so that the file fails alone instead of its whole list."""
    if "\0" in name:
        raise BadRequest(f"{name!r}: the {field} contains a NUL byte, which no file name can hold")
    if "/../" in name + "/":
        raise BadRequest(
            f"{name!r}: the {field} contains \"..\"; give the path without it (the daemon does "
            "not resolve \"..\", because a directory before it may be a symlink)"
        )
    size = len(name.encode("utf-8"))
    if size > MAX_PATH_BYTES:
        raise BadRequest(
            f"{name[:60]!r}...: the {field} is a path of {size} bytes; the limit is "
            f"{MAX_PATH_BYTES} bytes (PATH_MAX)"
        )


class _List:
    """One request: the items it carries (their indexes in the batch), while in flight."""

    __slots__ = ("items", "job", "deadline")

    def __init__(self, items: List[int]) -> None:
        self.items = items
        self.job: Optional[str] = None
        self.deadline: Optional[float] = None


class _Conn(SelectedConn):
    """A connection carrying one list at a time."""

    def __init__(self, path: str, sel: selectors.BaseSelector) -> None:
        super().__init__(path, sel)
        self.out = b""
        self.req_id = 0
        self.flight: Optional[_List] = None

    def send(self, data: bytes) -> None:
        self.out += data
        self.flush()

    def flush(self) -> None:
        """Sends what the socket takes now; raises OSError when the connection broke."""
        if self.out:
            try:
                sent = self.sock.send(self.out)
                self.out = self.out[sent:]
            except BlockingIOError:
                pass
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.out else 0)
        self.sel.modify(self.sock, events, self)


class ListBatch:
    """Runs ``items`` (all by path) as lists; see the module docs."""

    def __init__(self, path: str, items: List[Any], connections: int, timeout: Optional[float]) -> None:
        self.path = path
        self.items = items
        self.timeout = timeout
        self.results: List[Optional[Result]] = [None] * len(items)
        self.sel = selectors.DefaultSelector()
        self.conns: List[_Conn] = []
        self.lists = self.plan(connections)
        self.next = 0
        self.ids = 0

    def plan(self, connections: int) -> List[List[int]]:
        """The lists, in order: consecutive items of one shape (op, key, overwrite), at most
        :data:`LIST_FILES` files and :data:`LIST_BYTES` of paths each, and small enough that
        every connection gets one. A name the daemon cannot be sent fails alone, here."""
        lists: List[List[int]] = []
        current: List[int] = []
        size = 0
        shape: Any = None
        per_list = max(1, min(LIST_FILES, -(-len(self.items) // connections)))
        for index, item in enumerate(self.items):
            try:
                names = [wire_name(item.input, by_path=True), wire_name(item.output, by_path=True)]
                for field, name in zip(("input", "output"), names):
                    refuse_alone(field, name)
            except RingcryptError as err:
                self.results[index] = err
                continue
            # A name JSON writes as it is costs its length, quotes and comma; one with
            # characters to escape is measured.
            cost = sum(
                len(name) + 3
                if _PLAIN.fullmatch(name)
                else len(json.dumps(name, ensure_ascii=False).encode()) + 1
                for name in names
            )
            this = (item.op, item.key, item.overwrite)
            if current and (this != shape or len(current) >= per_list or size + cost > LIST_BYTES):
                lists.append(current)
                current, size = [], 0
            shape = this
            current.append(index)
            size += cost
        if current:
            lists.append(current)
        return lists

    def line(self, req_id: int, flight: _List) -> bytes:
        first = self.items[flight.items[0]]
        request: Dict[str, Any] = {"op": first.op, "id": req_id}
        request["inputs"] = [self.items[i].input for i in flight.items]
        if first.op != "verify":
            request["outputs"] = [self.items[i].output for i in flight.items]
        if first.key is not None:
            request["key"] = first.key
        if first.overwrite:
            request["overwrite"] = True
        return (json.dumps(request, ensure_ascii=False, separators=(",", ":")) + "\n").encode()

    def connect(self) -> Optional[RingcryptError]:
        try:
            self.conns.append(_Conn(self.path, self.sel))
            return None
        except RingcryptError as err:
            return err

    def start(self, conn: _Conn) -> None:
        flight = _List(self.lists[self.next])
        self.next += 1
        self.ids += 1
        conn.req_id = self.ids
        conn.flight = flight
        if self.timeout is not None:
            flight.deadline = time.monotonic() + self.timeout
        conn.send(self.line(self.ids, flight))

    def settle(self, flight: _List, position: int, result: Result) -> None:
        self.results[flight.items[position]] = result

    def end_list(self, conn: _Conn, err: Optional[RingcryptError]) -> None:
        """The list on ``conn`` ended; files it did not answer get ``err`` (or a dropped
        connection's error)."""
        flight = conn.flight
        conn.flight = None
        if flight is None:
            return
        for index in flight.items:
            if self.results[index] is None:
                self.results[index] = (
                    type(err)(err.message, code=err.code, job=err.job)
                    if err is not None
                    else dropped(self.path, self.items[index].op)
                )

    def on_lines(self, conn: _Conn, lines: List[bytes]) -> None:
        """The lines that arrived on ``conn``: a file that succeeded is read here, by the
        pattern of its line (most lines are those); any other line by :meth:`on_line`."""
        match = _FILE_DONE.match
        items, results, ours = self.items, self.results, str(conn.req_id).encode()
        file_done = t.file_done
        for line in lines:
            flight = conn.flight
            done = match(line)
            if done is None or flight is None:
                self.on_line(conn, line)
                continue
            if done[1] != ours:
                continue  # a late line of a list that timed out
            index = flight.items[int(done[3])]
            item = items[index]
            results[index] = file_done(item.op, item.input, item.output, done[2], done.group(4, 5, 6))
            if self.timeout is not None:
                flight.deadline = time.monotonic() + self.timeout

    def on_line(self, conn: _Conn, line: bytes) -> None:
        flight = conn.flight
        if _FILE_DONE.match(line) is not None:
            return  # a late line of a list that ended
        reply = json.loads(line)
        kind = reply.get("type")
        if flight is None or reply.get("id") != conn.req_id:
            if reply.get("id") is None and kind == "error":
                # A line the daemon could not read far enough to find its id: this
                # connection is out of step, so its list fails with it.
                self.drop(conn, error_for(str(reply.get("code")), str(reply.get("message"))))
            return
        if kind == "accepted":
            flight.job = str(reply.get("job"))
        elif kind == "file":
            position = int(reply["index"])
            item = self.items[flight.items[position]]
            job = str(reply.get("job"))
            result: Result
            if "code" in reply:
                result = error_for(str(reply["code"]), str(reply.get("message")), job)
            else:
                result = t.FileResult(
                    item.op,
                    item.input,
                    item.output,
                    job,
                    int(reply.get("bytes_in", 0)),
                    int(reply.get("bytes_out", 0)),
                    int(reply.get("micros", 0)),
                    skipped="skipped" in reply,
                )
            self.settle(flight, position, result)
            if self.timeout is not None:
                flight.deadline = time.monotonic() + self.timeout
        elif kind == "done":
            self.end_list(conn, None)
        elif kind == "error":
            self.end_list(conn, error_for(str(reply.get("code")), str(reply.get("message")), flight.job))

    def drop(self, conn: _Conn, err: Optional[RingcryptError] = None) -> None:
        """A broken connection: its list's unanswered files fail; it leaves the batch."""
        self.end_list(conn, err)
        conn.close()
        self.conns.remove(conn)

    def expire(self, now: float) -> None:
        for conn in list(self.conns):
            flight = conn.flight
            if flight is None or flight.deadline is None or flight.deadline > now:
                continue
            message = f"no file of a list of {len(flight.items)} ended within {self.timeout} s"
            if flight.job is not None:
                message += f"; job {flight.job} was cancelled"
                try:
                    conn.send(simple_line(f"cancel-{conn.req_id}", "cancel", job=flight.job))
                except OSError:
                    pass
            self.end_list(conn, Timeout(message, job=flight.job))

    def run(self, connections: int) -> List[Result]:
        for _ in range(min(connections, len(self.lists))):
            self.connect()  # a failure shows when no connection is left
        try:
            while True:
                for conn in self.conns:
                    if conn.flight is None and self.next < len(self.lists):
                        try:
                            self.start(conn)
                        except OSError as err:
                            self.drop(conn, dropped(self.path, "file", err))
                            break
                if self.next >= len(self.lists) and all(c.flight is None for c in self.conns):
                    break
                if not self.conns:
                    failure = self.connect()
                    if failure is not None:
                        self.fail_rest(failure)
                        break
                    continue
                wait = None
                if self.timeout is not None:
                    soonest = min(
                        (c.flight.deadline for c in self.conns if c.flight and c.flight.deadline),
                        default=None,
                    )
                    wait = None if soonest is None else max(0.0, soonest - time.monotonic())
                for key, mask in self.sel.select(wait):
                    conn = key.data
                    if conn not in self.conns:
                        continue
                    try:
                        if mask & selectors.EVENT_WRITE:
                            conn.flush()
                        if mask & selectors.EVENT_READ:
                            self.on_lines(conn, conn.lines())
                    except (OSError, EOFError) as err:
                        if conn in self.conns:
                            cause = err if isinstance(err, OSError) else None
                            self.drop(conn, dropped(self.path, self.items[0].op, cause))
                if self.timeout is not None:
                    self.expire(time.monotonic())
        finally:
            for conn in list(self.conns):
                self.end_list(conn, None)
                conn.close()
            self.sel.close()
        return [r if r is not None else dropped(self.path, "file") for r in self.results]

    def fail_rest(self, err: RingcryptError) -> None:
        for index in range(len(self.results)):
            if self.results[index] is None:
                self.results[index] = type(err)(err.message, code=err.code)
        self.next = len(self.lists)
