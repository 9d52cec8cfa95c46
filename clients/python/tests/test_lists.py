"""map_files by path, both backends: the files go to the daemon as lists (many files in
one request, each answered by its own ``file`` line). What must stay intact: each result is
at its input's index and each failure is that file's alone; every success verifies offline
with its input's bytes and no other output appears; lists are what went over the socket
(the daemon's audit names each with its file count); a daemon killed mid-run leaves every
call either DaemonUnavailable or a verified result, and an output only for a success; a
daemon that stops answering gives Timeout for every file, in time."""

import os
import re
import signal
import time

import ringcrypt
from conftest import Daemon, map_files_killed_midway, temp_files, write

FILES = 3000


def test_lists_in_order_with_failures(daemon: Daemon) -> None:
    client = daemon.client()
    src = daemon.root / "in"
    out = daemon.root / "out"
    paths, expected = [], {}
    for i in range(FILES):
        rel = f"d{i % 7}/f{i:05d}"
        data = os.urandom(i % 5000)
        write(src / rel, data)
        paths.append(src / rel)
        expected[i] = data
    outputs = [out / (str(p.relative_to(src)) + ".rcrypt") for p in paths]
    for o in outputs:
        o.parent.mkdir(parents=True, exist_ok=True)
    # Failures mixed in, each its own: a missing input, an input outside the daemon's
    # roots, an output that exists, a directory as the input, and a path the daemon would
    # refuse while reading the request (it holds ".."), which must not take its list down.
    missing, outside, exists_at, directory, dotdot = 7, 1500, 2222, FILES - 1, 600
    paths[missing] = src / "no-such-file"
    write(daemon.outside / "secret", b"outside")
    paths[outside] = daemon.outside / "secret"
    write(outputs[exists_at], b"keep me")
    paths[directory] = src / "d3"
    paths[dotdot] = src / "d1" / ".." / paths[dotdot].relative_to(src)

    results = client.map_files("encrypt", paths, outputs=outputs, by_path=True)
    assert len(results) == FILES
    failures = {i: r for i, r in enumerate(results) if not isinstance(r, ringcrypt.FileResult)}
    assert sorted(failures) == [missing, dotdot, outside, exists_at, directory], failures
    assert isinstance(failures[dotdot], ringcrypt.BadRequest) and ".." in failures[dotdot].message
    assert isinstance(failures[missing], ringcrypt.NotFound)
    assert isinstance(failures[outside], ringcrypt.ForbiddenPath)
    assert isinstance(failures[exists_at], ringcrypt.Exists)
    assert isinstance(failures[directory], ringcrypt.BadRequest)
    assert all(f.message for f in failures.values())
    assert outputs[exists_at].read_bytes() == b"keep me"
    for i, r in enumerate(results):
        if i not in failures:
            assert isinstance(r, ringcrypt.FileResult)
            assert (r.input, r.output, r.bytes_in) == (str(paths[i]), str(outputs[i]), len(expected[i]))
    # Exactly the successes have outputs, and each holds its input's bytes.
    outputs[exists_at].unlink()
    opened = daemon.open_tree_offline(out, daemon.dir / "opened")
    want = {str(paths[i].relative_to(src)): expected[i] for i in range(FILES) if i not in failures}
    assert opened == want
    assert temp_files(daemon.dir) == []
    # They went as lists: the audit names each request's file count, and a few requests
    # carried them all.
    counts = [int(n) for n in re.findall(r"accepted .*?files=(\d+)", daemon.log_text())]
    assert sum(counts) == FILES - 1 and len(counts) <= 12, counts
    client.close()


def test_lists_survive_a_killed_daemon(daemon: Daemon) -> None:
    src = daemon.root / "in"
    out = daemon.root / "out"
    out.mkdir()
    paths = [write(src / f"f{i:04d}", os.urandom(40_000 + i)) for i in range(2000)]
    outputs = [out / f"f{i:04d}.rcrypt" for i in range(2000)]
    results = map_files_killed_midway(daemon, paths, outputs, by_path=True)
    ok = {i for i, r in enumerate(results) if isinstance(r, ringcrypt.FileResult)}
    others = [r for r in results if not isinstance(r, ringcrypt.FileResult)]
    assert all(isinstance(r, ringcrypt.DaemonUnavailable) for r in others), {type(r) for r in others}
    assert others, "premise: the daemon died before the last file"
    # An output may exist for a file whose line the kill cut off (it was linked, then the
    # daemon died before it could say so): it is complete. None exists without a success
    # or such a file, no temp file is left, and every output opens to its input.
    names = set(os.listdir(out))
    assert {outputs[i].name for i in ok} <= names
    assert temp_files(daemon.dir) == []
    opened = daemon.open_tree_offline(out, daemon.dir / "opened")
    for name, data in opened.items():
        assert data == (src / name).read_bytes(), name


def test_lists_time_out_when_the_daemon_stops_answering(daemon: Daemon) -> None:
    src = daemon.root / "in"
    paths = [write(src / f"f{i}", b"x" * i) for i in range(50)]
    assert daemon.proc is not None
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        results = daemon.client().map_files("encrypt", paths, by_path=True, timeout=1.0)
        took = time.monotonic() - started
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)
    assert all(isinstance(r, ringcrypt.Timeout) for r in results), {type(r) for r in results}
    assert took < 10, took
    # The daemon serves on; whatever it wrote after waking is complete.
    assert daemon.client().ping(timeout=10).backend == daemon.backend
    time.sleep(0.5)
    for path in paths:
        sealed = path.parent / (path.name + ".rcrypt")
        if sealed.exists():
            assert daemon.open_offline(sealed, daemon.dir / "check") == path.read_bytes()
