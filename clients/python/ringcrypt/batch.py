"""``map_files``' engine: many single-file jobs pipelined over a few non-blocking connections
from one thread, with a selector.

Up to ``concurrency`` requests are in flight at once, each sent on the connection with the
fewest in flight (the daemon spreads connections over its shards, and jobs on descriptors run
on their connection's shard). Replies are matched to requests by id; a file whose job is
``done`` is linked into place at once, and a failure is that file's result, never the batch's.
A connection that breaks fails the files in flight on it with ``DaemonUnavailable``; the rest
go on over the others (or a new connection), and when none can be had every file not yet
answered gets ``DaemonUnavailable``. Outputs are linked only after ``done``, so whatever
happens to the daemon no output is ever partial.
"""

import collections
import json
import os
import re
import selectors
import time
from typing import Any, Deque, Dict, List, Optional, Set, Union

from . import types as t
from ._lists import ListBatch
from ._jobs import LineHead, NoTmpfile, PassedFiles, line_head, output_dir, simple_line, wire_name
from ._wire import SelectedConn, dropped, scm_rights
from .errors import RingcryptError, Timeout, error_for

Result = Union[t.FileResult, RingcryptError]


class BatchItem:
    """One file of a batch, planned before anything is sent."""

    __slots__ = ("op", "input", "output", "key", "overwrite", "in_place", "by_path")

    def __init__(
        self,
        op: str,
        input: str,
        output: str,
        key: Optional[str],
        overwrite: bool,
        in_place: bool,
        by_path: bool,
    ) -> None:
        self.op = op
        self.input = input
        self.output = output
        self.key = key
        self.overwrite = overwrite
        self.in_place = in_place
        self.by_path = by_path


# Requests on descriptors that share one sendmsg: the daemon takes up to 8 descriptors with
# one message and hands each "fds" line the next two (docs/protocol.md, "Passing
# descriptors"). One message per four files is a quarter of the sends, the costliest call
# this client makes per file. The lines stay within the daemon's first receive buffer.
FDS_REQUESTS_PER_SEND = 4
FDS_SEND_BYTES = 1024
# Output directories a batch keeps open at once to create and link its outputs; past that the
# one opened first is closed. Outputs spread over up to this many directories, in any order,
# cost no directory open per file.
MAX_OPEN_DIRS = 256
# The daemon's ``done`` for one file, as it writes it: read without building a dict. Any other
# shape (another order, a skipped file, a string id) goes through json.loads.
_DONE = re.compile(
    rb'\{"type":"done","id":(\d+),"job":"([^"\\]*)","bytes_in":(\d+),"bytes_out":(\d+),'
    rb'"micros":(\d+),"files_ok":1,"files_failed":0,"files_skipped":0,'
)


class _Flight:
    """A request queued or sent, and not yet answered (``over`` once it has its result)."""

    __slots__ = ("index", "files", "deadline", "job", "over", "sent")

    def __init__(self, index: int, files: Optional[PassedFiles], deadline: Optional[float]):
        self.index = index
        self.files = files
        self.deadline = deadline
        self.job: Optional[str] = None
        self.over = False
        self.sent = False


class _Conn(SelectedConn):
    """One non-blocking connection of a batch."""

    def __init__(self, path: str, sel: selectors.BaseSelector) -> None:
        super().__init__(path, sel)
        # What is still to send: [bytes, descriptors or None, the flights whose descriptors
        # go with it].
        self.out: Deque[List[Any]] = collections.deque()
        self.flights: Dict[int, _Flight] = {}
        self.writing = False

    def queue(self, line: bytes, fds: Optional[List[int]], flight: Optional[_Flight]) -> None:
        # Only an entry whose descriptors have not left yet takes more: once a send began,
        # its descriptors are None.
        last = self.out[-1] if self.out else None
        if fds is None:
            if last is not None and last[1] is None:
                last[0] += line  # plain lines go out together
                return
            self.out.append([line, None, []])
            if flight is not None:
                flight.sent = True
            return
        if (
            last is not None
            and last[1] is not None
            and len(last[2]) < FDS_REQUESTS_PER_SEND
            and len(last[0]) + len(line) <= FDS_SEND_BYTES
        ):
            last[0] += line
            last[1] += fds
            last[2].append(flight)
        else:
            self.out.append([line, list(fds), [flight]])

    def flush(self) -> None:
        """Sends what the socket takes now; raises OSError when the connection broke."""
        while self.out:
            entry = self.out[0]
            data, fds, flights = entry
            try:
                if fds is not None:
                    sent = self.sock.sendmsg([data], scm_rights(fds))
                    entry[1] = None
                    for flight in flights:
                        flight.sent = True
                        if flight.files is not None:
                            # The daemon holds its own copy of the input now; a request
                            # that timed out while queued leaves nothing open either.
                            flight.files.close_input()
                            if flight.over:
                                flight.files.close()
                else:
                    sent = self.sock.send(data)
            except BlockingIOError:
                break
            if sent < len(data):
                entry[0] = data[sent:]
                continue
            self.out.popleft()
        want = bool(self.out)
        if want != self.writing:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
            self.sel.modify(self.sock, events, self)
            self.writing = want

    def close(self) -> None:
        """Closes the socket, and the files of requests that were never sent."""
        for _data, fds, flights in self.out:
            if fds is not None:
                for flight in flights:
                    if flight.files is not None:
                        flight.files.close()
        self.out.clear()
        super().close()


class _Batch:
    def __init__(self, path: str, items: List[BatchItem], fsync: bool, timeout: Optional[float]):
        self.path = path
        self.items = items
        self.fsync = fsync
        self.timeout = timeout
        self.results: List[Optional[Result]] = [None] * len(items)
        self.sel = selectors.DefaultSelector()
        self.conns: List[_Conn] = []
        self.next = 0
        self.in_flight = 0
        self.ids = 0
        # Output directories kept open for linking (files of a batch mostly share a few).
        self.dirs: Dict[str, int] = {}
        self.umask = process_umask()
        # Open directories with a default ACL: a file created there takes its mode from the
        # ACL rather than the umask, so its outputs get the input's mode by fchmod.
        self.acl_dirs: Set[str] = set()
        # Request lines' fixed parts, by (op, key, overwrite, by_path).
        self.heads: Dict[Any, LineHead] = {}

    def dir_fd(self, path: str) -> Optional[int]:
        fd = self.dirs.get(path)
        if fd is None:
            if len(self.dirs) >= MAX_OPEN_DIRS:
                oldest = next(iter(self.dirs))
                os.close(self.dirs.pop(oldest))
                self.acl_dirs.discard(oldest)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                return None  # the commit opens it itself and reports why it cannot
            self.dirs[path] = fd
            if has_default_acl(fd):
                self.acl_dirs.add(path)
        return fd

    def close_dirs(self) -> None:
        for fd in self.dirs.values():
            os.close(fd)
        self.dirs.clear()
        self.acl_dirs.clear()

    def connect(self) -> Optional[RingcryptError]:
        try:
            self.conns.append(_Conn(self.path, self.sel))
            return None
        except RingcryptError as err:
            return err

    def start(self, conn: _Conn) -> None:
        """Opens the next file's descriptors and queues its request on ``conn``."""
        index = self.next
        self.next += 1
        item = self.items[index]
        files: Optional[PassedFiles] = None
        if not item.by_path:
            try:
                out_dir = output_dir(item.output)
                dir_fd = self.dir_fd(out_dir)
                files = PassedFiles(
                    item.input,
                    item.output,
                    item.overwrite,
                    item.in_place,
                    precheck=False,
                    dir_fd=dir_fd,
                    umask=None if dir_fd is None or out_dir in self.acl_dirs else self.umask,
                )
            except NoTmpfile:
                files = None
            except RingcryptError as err:
                self.results[index] = err
                return
        by_path = files is None
        self.ids += 1
        shape = (item.op, item.key, item.overwrite, by_path)
        head = self.heads.get(shape)
        if head is None:
            head = self.heads[shape] = line_head(
                item.op, key=item.key, overwrite=item.overwrite, fds=not by_path
            )
        try:
            line = head.line(
                self.ids,
                wire_name(item.input, by_path=by_path),
                wire_name(item.output, by_path=by_path),
            )
        except RingcryptError as err:
            self.results[index] = err
            return
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        flight = _Flight(index, files, deadline)
        conn.flights[self.ids] = flight
        self.in_flight += 1
        conn.queue(line, files.fds() if files else None, flight)

    def finish(self, conn: _Conn, req_id: Any, flight: _Flight, result: Result) -> None:
        del conn.flights[req_id]
        self.in_flight -= 1
        flight.over = True
        # Descriptors still queued to send stay open until they are sent (`flush`).
        if flight.files is not None and flight.sent and not isinstance(result, t.FileResult):
            flight.files.close()
        self.results[flight.index] = result

    def on_reply(self, conn: _Conn, line: bytes) -> None:
        done = _DONE.match(line)
        if done is not None:
            flight = conn.flights.get(int(done[1]))
            if flight is not None:
                self.done(conn, int(done[1]), flight, done)
                return
        reply = json.loads(line)
        req_id = reply.get("id")
        flight = conn.flights.get(req_id) if req_id is not None else None
        kind = reply.get("type")
        if flight is None:
            if req_id is None and kind == "error":
                # A line the daemon could not read far enough to find its id: this
                # connection is out of step, so what is in flight on it fails with it.
                err = error_for(str(reply.get("code")), str(reply.get("message")))
                self.drop(conn, err)
            return  # a late reply to a request that timed out, or a cancel's answer
        if kind == "accepted":
            flight.job = reply.get("job")
        elif kind == "done":
            self.done(conn, req_id, flight, reply)
        elif kind == "error":
            failed = error_for(str(reply.get("code")), str(reply.get("message")), flight.job)
            self.finish(conn, req_id, flight, failed)

    def done(self, conn: _Conn, req_id: Any, flight: _Flight, reply: Any) -> None:
        """A file's ``done`` (the parsed line, or the match of :data:`_DONE`): its output is
        linked into place, and its result recorded."""
        item = self.items[flight.index]
        result: Result
        if isinstance(reply, dict):
            result = t.file_result(item.op, item.input, item.output, reply)
        else:
            result = t.file_done(item.op, item.input, item.output, reply[2], reply.group(3, 4, 5))
        if flight.files is not None:
            try:
                files = flight.files
                files.commit(self.fsync, self.dir_fd(files.dir))
            except RingcryptError as link_error:
                result = link_error
        self.finish(conn, req_id, flight, result)

    def drop(self, conn: _Conn, err: Optional[RingcryptError] = None) -> None:
        """A broken connection: its files in flight fail; it leaves the batch."""
        for req_id, flight in list(conn.flights.items()):
            self.finish(conn, req_id, flight, err or dropped(self.path, self.items[flight.index].op))
        conn.close()
        self.conns.remove(conn)

    def expire(self, now: float) -> None:
        for conn in self.conns:
            late = [(r, f) for r, f in conn.flights.items() if f.deadline is not None and f.deadline <= now]
            for req_id, flight in late:
                if flight.job is not None:
                    conn.queue(simple_line(f"cancel-{req_id}", "cancel", job=flight.job), None, None)
                message = f"no final reply for {self.items[flight.index].input} within {self.timeout} s"
                if flight.job:
                    message += f"; job {flight.job} was cancelled"
                self.finish(conn, req_id, flight, Timeout(message, job=flight.job))

    def run(self, concurrency: int, connections: int) -> List[Result]:
        n = len(self.items)
        skip_accepted = self.timeout is None
        for _ in range(min(connections, concurrency, n)):
            self.connect()  # a failure shows when no connection is left
        try:
            while True:
                while self.in_flight < concurrency and self.next < n and self.conns:
                    self.start(min(self.conns, key=lambda c: len(c.flights)))
                if self.next >= n and self.in_flight == 0:
                    break
                if not self.conns:
                    err = self.connect()
                    if err is not None:
                        self.fail_rest(err)
                        break
                    continue
                for conn in list(self.conns):
                    try:
                        conn.flush()
                    except OSError as err:
                        self.drop(conn, dropped(self.path, "file", err))
                if not self.conns:
                    continue  # nothing to wait on: reconnect, or fail what is left
                wait = self.next_deadline()
                for key, mask in self.sel.select(wait):
                    conn = key.data
                    if conn not in self.conns:
                        continue
                    try:
                        if mask & selectors.EVENT_WRITE:
                            conn.flush()
                        if mask & selectors.EVENT_READ:
                            for line in conn.lines():
                                # An accepted's job id only matters to cancel a file that
                                # timed out.
                                if skip_accepted and line.startswith(b'{"type":"accepted"'):
                                    continue
                                self.on_reply(conn, line)
                    except (OSError, EOFError) as err:
                        if conn in self.conns:
                            cause = err if isinstance(err, OSError) else None
                            self.drop(conn, dropped(self.path, self.items[0].op, cause))
                if self.timeout is not None:
                    self.expire(time.monotonic())
        finally:
            for conn in list(self.conns):
                for req_id, flight in list(conn.flights.items()):
                    self.finish(conn, req_id, flight, dropped(self.path, "file"))
                conn.close()
            self.sel.close()
            self.close_dirs()
        return [r if r is not None else dropped(self.path, "file") for r in self.results]

    def next_deadline(self) -> Optional[float]:
        if self.timeout is None:
            return None
        soonest = min(
            (f.deadline for c in self.conns for f in c.flights.values() if f.deadline is not None),
            default=None,
        )
        return None if soonest is None else max(0.0, soonest - time.monotonic())

    def fail_rest(self, err: RingcryptError) -> None:
        for index in range(len(self.results)):
            if self.results[index] is None:
                self.results[index] = type(err)(err.message, code=err.code)
        self.next = len(self.items)


def has_default_acl(dir_fd: int) -> bool:
    try:
        os.getxattr(dir_fd, "system.posix_acl_default")
    except OSError:
        return False  # none (ENODATA), or a file system without ACLs
    return True


def process_umask() -> Optional[int]:
    """The process's umask, read where reading it changes nothing (``os.umask`` would set
    it, for every thread); None when /proc does not tell."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def run_batch(
    path: str,
    items: List[BatchItem],
    concurrency: int,
    connections: int,
    fsync: bool,
    timeout: Optional[float],
) -> List[Result]:
    if concurrency < 1 or connections < 1:
        raise ValueError("concurrency and connections must be at least 1")
    if timeout is not None and timeout < 0:
        raise ValueError("timeout must be None or at least 0")
    if not items:
        return []
    if all(item.by_path for item in items):
        # Paths go as lists, hundreds to a request (`_lists`); the daemon's own fsync
        # policy applies to what it writes.
        return ListBatch(path, items, connections, timeout).run(connections)
    return _Batch(path, items, fsync, timeout).run(concurrency, connections)
