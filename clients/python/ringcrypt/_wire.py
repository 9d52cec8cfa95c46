"""The socket itself: where it is, connecting, sending a line with descriptors, reading reply
lines, and which reply lines belong to a request (docs/protocol.md, "Framing")."""

import array
import json
import os
import select
import selectors
import socket
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .errors import DaemonUnavailable, RingcryptError, Timeout, error_for

DEFAULT_SOCKET = "/run/ringcrypt/ringcrypt.sock"
# How long the requests that touch no file (ping, status, cancel, jobs, stats, keys) wait for
# their one reply by default: the CLI's bound. File jobs have none unless the caller sets one.
SHORT_TIMEOUT = 10.0
# How long connecting may take; a local socket answers at once or not at all.
CONNECT_TIMEOUT = 10.0
RECV_BYTES = 256 * 1024
# An idle connection older than this is not reused: the daemon closes connections idle for
# 300 s (docs/protocol.md, "Limits"), and a request sent into one it just closed would fail.
IDLE_REUSE_SECONDS = 120.0

ReqId = Union[int, str]


def socket_path(socket_arg: Optional[Union[str, "os.PathLike[str]"]]) -> str:
    """The socket: the one given, else ``$RINGCRYPT_SOCKET``, else the system one."""
    if socket_arg is not None:
        return os.fsdecode(os.fspath(socket_arg))
    return os.environ.get("RINGCRYPT_SOCKET") or DEFAULT_SOCKET


def unavailable(path: str, err: BaseException) -> DaemonUnavailable:
    if isinstance(err, FileNotFoundError):
        cause = "no such socket (is the daemon running?)"
    elif isinstance(err, ConnectionRefusedError):
        cause = "connection refused (the daemon is not running, or the socket is stale)"
    elif isinstance(err, PermissionError):
        cause = "permission denied (ask to be added to the daemon's group)"
    else:
        cause = str(err) or type(err).__name__
    exc = DaemonUnavailable(f"cannot reach ringcryptd at {path}: {cause}")
    exc.__cause__ = err
    return exc


def dropped(path: str, what: str, err: Optional[BaseException] = None) -> DaemonUnavailable:
    detail = f": {err}" if err is not None else ""
    return DaemonUnavailable(
        f"the connection to ringcryptd at {path} broke before the {what} request was "
        f"answered (did the daemon stop?){detail}"
    )


def scm_rights(fds: Sequence[int]) -> List[Tuple[int, int, bytes]]:
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]


def parse_line(line: bytes) -> Dict[str, Any]:
    try:
        reply = json.loads(line)
    except ValueError as err:
        raise RingcryptError(
            f"a reply line is not JSON ({err}); is ringcryptd listening on this socket?",
            code="internal",
        ) from None
    if not isinstance(reply, dict) or "type" not in reply:
        raise RingcryptError("a reply line is not a reply object", code="internal")
    parsed: Dict[str, Any] = reply
    return parsed


def is_ours(reply: Dict[str, Any], req_id: ReqId) -> bool:
    """A reply about our request: it carries our id, or it is an error without one (the
    daemon refusing a line it could not read far enough to find the id)."""
    if "id" in reply:
        return bool(reply["id"] == req_id)
    return bool(reply.get("type") == "error")


def raise_error(reply: Dict[str, Any], job: Optional[str] = None) -> None:
    raise error_for(
        str(reply.get("code", "internal")), str(reply.get("message", "")), reply.get("job", job)
    )


def timed_out(what: str, timeout: Optional[float], job: Optional[str]) -> Timeout:
    return Timeout(
        f"no final reply to the {what} request within {timeout} s"
        + (f"; job {job} was cancelled" if job else ""),
        job=job,
    )


class Waiter:
    """One request's replies as they come, for both clients: :meth:`final` tells the line
    that ends it (one of its own that is not ``accepted`` or ``progress``) and keeps the job
    id those give; :meth:`outcome` returns that line or raises its error."""

    __slots__ = ("req_id", "job")

    def __init__(self, req_id: ReqId) -> None:
        self.req_id = req_id
        self.job: Optional[str] = None

    def final(self, reply: Dict[str, Any]) -> bool:
        if not is_ours(reply, self.req_id):
            return False
        if reply["type"] in ("accepted", "progress"):
            self.job = reply.get("job")
            return False
        return True

    def outcome(self, reply: Dict[str, Any]) -> Dict[str, Any]:
        if reply["type"] == "error":
            raise_error(reply, self.job)
        return reply


class Deadline:
    """A point in time a call must end by, or none."""

    __slots__ = ("at", "timeout", "what")

    def __init__(self, timeout: Optional[float], what: str) -> None:
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be None or at least 0")
        self.timeout = timeout
        self.at = None if timeout is None else time.monotonic() + timeout
        self.what = what

    def left(self) -> Optional[float]:
        """Seconds left (None: no bound); raises Timeout once none are."""
        if self.at is None:
            return None
        left = self.at - time.monotonic()
        if left <= 0:
            raise self.expired()
        return left

    def expired(self, job: Optional[str] = None) -> Timeout:
        return timed_out(self.what, self.timeout, job)


class LineSocket:
    """What both clients' connections share: the socket, the reply bytes read and not yet
    taken, and whether a pooled connection may be used again."""

    def __init__(self, path: str, sock: socket.socket) -> None:
        self.path = path
        self.sock = sock
        self.buf = bytearray()
        self.idle_since = time.monotonic()

    def reusable(self) -> bool:
        """For a pooled connection: not idle too long, and nothing waiting on it (a waiting
        end of stream means the daemon closed it, or restarted)."""
        if self.buf or time.monotonic() - self.idle_since > IDLE_REUSE_SECONDS:
            return False
        readable, _, _ = select.select([self.sock], [], [], 0)
        return not readable

    def next_line(self) -> Optional[Dict[str, Any]]:
        """The next whole reply line read, parsed; None until one has arrived."""
        end = self.buf.find(b"\n")
        if end < 0:
            return None
        line = bytes(self.buf[:end])
        del self.buf[: end + 1]
        return parse_line(line)

    def received(self, chunk: bytes, what: str) -> None:
        """Bytes a receive returned: more lines, or (empty) the daemon's end of stream."""
        if not chunk:
            raise dropped(self.path, what)
        self.buf += chunk


class Conn(LineSocket):
    """One blocking connection: send a line (with descriptors), read reply lines."""

    def __init__(self, path: str) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(path)
        except OSError as err:
            sock.close()
            raise unavailable(path, err) from err
        super().__init__(path, sock)

    def send(self, line: bytes, fds: Sequence[int], deadline: Deadline) -> None:
        try:
            self.sock.settimeout(deadline.left() if deadline.at else CONNECT_TIMEOUT)
            sent = 0
            if fds:
                sent = self.sock.sendmsg([line], scm_rights(fds))
            if sent < len(line):
                self.sock.sendall(line[sent:])
        except socket.timeout:
            raise deadline.expired() from None
        except OSError as err:
            raise dropped(self.path, deadline.what, err) from err

    def read(self, deadline: Deadline) -> Dict[str, Any]:
        """The next reply line, parsed."""
        while True:
            reply = self.next_line()
            if reply is not None:
                return reply
            try:
                self.sock.settimeout(deadline.left())
                chunk = self.sock.recv(RECV_BYTES)
            except socket.timeout:
                raise deadline.expired() from None
            except OSError as err:
                raise dropped(self.path, deadline.what, err) from err
            self.received(chunk, deadline.what)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class SelectedConn:
    """A non-blocking connection in a selector (``map_files``' engines): it connects,
    registers for reading with itself as the key's data, and cuts what arrives into
    lines."""

    def __init__(self, path: str, sel: selectors.BaseSelector) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect(path)
            sock.setblocking(False)
        except OSError as err:
            sock.close()
            raise unavailable(path, err) from err
        self.path = path
        self.sock = sock
        self.sel = sel
        self.buf = b""
        sel.register(sock, selectors.EVENT_READ, self)

    def lines(self) -> List[bytes]:
        """Reply lines that arrived; raises OSError (or EOFError) when the connection broke."""
        try:
            chunk = self.sock.recv(RECV_BYTES)
        except BlockingIOError:
            return []
        if not chunk:
            raise EOFError
        data = self.buf + chunk if self.buf else chunk
        parts = data.split(b"\n")
        self.buf = parts.pop()
        return parts

    def close(self) -> None:
        try:
            self.sel.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()
