"""The client's side of the conversation, against a stand-in server on a real socket, where
the daemon's timing cannot decide the outcome: descriptors passed with the request line, a
timeout after ``accepted`` that cancels the job and links nothing, and a connection dropped
mid-request. What must stay intact: the caller's output name stays empty in every case."""

import array
import json
import os
import socket
import stat
import threading
from pathlib import Path
from typing import List

import pytest

import ringcrypt


class StandIn:
    """Accepts one connection, reads one request line with its descriptors, then answers
    ``accepted`` and behaves as ``after`` says: ``silent`` (then records what else comes) or
    ``close``."""

    def __init__(self, path: Path, after: str) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.after = after
        self.request: dict = {}
        self.fd_info: List[dict] = []
        self.later = b""
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        conn, _ = self.listener.accept()
        fds = array.array("i")
        data, ancdata, _flags, _addr = conn.recvmsg(65536, socket.CMSG_SPACE(8 * fds.itemsize))
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        for fd in fds:
            st = os.fstat(fd)
            flags = int(open(f"/proc/self/fdinfo/{fd}").read().split("flags:")[1].split()[0], 8)
            self.fd_info.append({"links": st.st_nlink, "size": st.st_size, "regular": stat.S_ISREG(st.st_mode), "acc": flags & 3})
            os.close(fd)
        self.request = json.loads(data.split(b"\n")[0])
        conn.sendall(json.dumps({"type": "accepted", "id": self.request["id"], "job": "1-7"}).encode() + b"\n")
        if self.after == "close":
            conn.close()
            return
        conn.settimeout(10)
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                self.later += chunk
        except OSError:
            pass
        conn.close()

    def close(self) -> None:
        self.thread.join(10)
        self.listener.close()


def test_descriptors_go_with_the_line_and_a_timeout_cancels(tmp_path: Path) -> None:
    plain = tmp_path / "in.txt"
    plain.write_bytes(b"secret")
    server = StandIn(tmp_path / "s.sock", "silent")
    client = ringcrypt.Client(tmp_path / "s.sock")
    with pytest.raises(ringcrypt.Timeout) as timed_out:
        client.encrypt(plain, timeout=0.5)
    assert timed_out.value.job == "1-7" and "1-7 was cancelled" in timed_out.value.message
    server.close()
    req = server.request
    assert (req["op"], req["fds"], req["input"], req["output"]) == (
        "encrypt", True, str(plain), str(plain) + ".rcrypt",
    )
    # First the input, open for reading; then an unnamed, empty, writable output.
    assert len(server.fd_info) == 2, server.fd_info
    assert server.fd_info[0]["regular"] and server.fd_info[0]["acc"] == os.O_RDONLY
    out = server.fd_info[1]
    assert out["links"] == 0 and out["size"] == 0 and out["acc"] in (os.O_WRONLY, os.O_RDWR)
    later = [json.loads(line) for line in server.later.splitlines()]
    assert [(m["op"], m["job"]) for m in later] == [("cancel", "1-7")]
    assert sorted(os.listdir(tmp_path)) == ["in.txt", "s.sock"], "nothing was linked"


def test_a_dropped_connection_is_daemon_unavailable(tmp_path: Path) -> None:
    plain = tmp_path / "in.txt"
    plain.write_bytes(b"data")
    server = StandIn(tmp_path / "s.sock", "close")
    with pytest.raises(ringcrypt.DaemonUnavailable) as dropped:
        ringcrypt.Client(tmp_path / "s.sock").encrypt(plain)
    server.close()
    assert "broke before the encrypt request was answered" in dropped.value.message
    assert sorted(os.listdir(tmp_path)) == ["in.txt", "s.sock"]


def test_default_socket_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RINGCRYPT_SOCKET", "/nonexistent/r.sock")
    assert ringcrypt.Client().socket == "/nonexistent/r.sock"
    assert ringcrypt.AsyncClient().socket == "/nonexistent/r.sock"
    monkeypatch.delenv("RINGCRYPT_SOCKET")
    assert ringcrypt.Client().socket == "/run/ringcrypt/ringcrypt.sock"
    with pytest.raises(ringcrypt.DaemonUnavailable) as down:
        ringcrypt.Client("/nonexistent/r.sock").ping()
    assert "/nonexistent/r.sock" in str(down.value)


def test_error_classes_cover_every_code_and_pickle() -> None:
    import pickle

    from ringcrypt.errors import error_for

    codes = {
        "bad_request": ringcrypt.BadRequest, "unknown_op": ringcrypt.UnknownOp,
        "too_large": ringcrypt.TooLarge, "not_found": ringcrypt.NotFound,
        "permission_denied": ringcrypt.PermissionDenied, "forbidden_path": ringcrypt.ForbiddenPath,
        "exists": ringcrypt.Exists, "auth_failed": ringcrypt.AuthFailed,
        "unknown_key": ringcrypt.UnknownKey, "key_retired": ringcrypt.KeyRetired,
        "bad_format": ringcrypt.BadFormat, "busy": ringcrypt.Busy, "timeout": ringcrypt.Timeout,
        "cancelled": ringcrypt.Cancelled, "io_error": ringcrypt.IoError,
        "no_space": ringcrypt.NoSpace, "shutting_down": ringcrypt.ShuttingDown,
        "internal": ringcrypt.Internal,
    }
    for code, cls in codes.items():
        err = error_for(code, f"the daemon says {code}", "0-3")
        assert type(err) is cls and isinstance(err, ringcrypt.RingcryptError)
        assert (err.code, err.message, err.job) == (code, f"the daemon says {code}", "0-3")
        back = pickle.loads(pickle.dumps(err))
        assert (type(back), back.code, back.message, back.job) == (cls, code, err.message, "0-3")
    newer = error_for("quota_exceeded", "a code from a newer daemon")
    assert type(newer) is ringcrypt.RingcryptError and newer.code == "quota_exceeded"
    assert str(newer) == "a code from a newer daemon [quota_exceeded]"


# Paths a request line must carry exactly: quotes, backslashes, control characters, non-ASCII
# and the two line separators JSON leaves alone but some readers do not.
AWKWARD = ['/a/"q"', "/a/back\\slash", "/a/tab\there", "/a/nl\nx", "/a/é ü 雪", "/a/\u2028\u2029"]


def test_request_lines_say_what_json_dumps_says() -> None:
    """map_files builds its lines from a fixed head and escapes only the paths; what must
    stay intact: each line parses back to exactly the request, is the compact json.dumps of
    it byte for byte, is one line, and ends in a newline."""
    from ringcrypt._jobs import line_head

    for req_id in (1, 123456789, "cancel-7", True):
        for path in AWKWARD:
            for key, overwrite, fds in ((None, False, True), ('k"1', True, False)):
                line = line_head("encrypt", key, overwrite, fds=fds).line(req_id, path, path + ".rcrypt")
                want = {"op": "encrypt", "id": req_id, "input": path, "output": path + ".rcrypt"}
                if key is not None:
                    want["key"] = key
                if overwrite:
                    want["overwrite"] = True
                if fds:
                    want["fds"] = True
                assert json.loads(line) == want
                assert line == (json.dumps(want, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
                assert line.count(b"\n") == 1 and line.endswith(b"\n")


def test_done_lines_read_without_json_match_json() -> None:
    """The batch reads the daemon's usual one-file ``done`` with a pattern; what must stay
    intact: the FileResult it gives equals the one json.loads gives, and any other shape of
    line (a skipped file, other fields first) is left to json.loads."""
    from ringcrypt import types as t
    from ringcrypt.batch import _DONE

    line = (
        b'{"type":"done","id":42,"job":"1-977","bytes_in":4096,"bytes_out":4240,"micros":183,'
        b'"files_ok":1,"files_failed":0,"files_skipped":0,"failures":[],"skipped":[]}'
    )
    m = _DONE.match(line)
    assert m is not None and int(m[1]) == 42
    fast = ringcrypt.FileResult("encrypt", "/i", "/o", m[2].decode(), int(m[3]), int(m[4]), int(m[5]))
    assert fast == t.file_result("encrypt", "/i", "/o", json.loads(line))
    skipped = line.replace(b'"files_ok":1', b'"files_ok":0').replace(b'"files_skipped":0', b'"files_skipped":1')
    reordered = b'{"id":42,' + line[1:].replace(b'"id":42,', b"")
    for other in (skipped, reordered, line.replace(b'"id":42', b'"id":"42"')):
        assert _DONE.match(other) is None
        json.loads(other)  # still a reply line, read the slow way
