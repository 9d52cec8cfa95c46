"""map_files, both backends: 5,000 files in order with per-file failures that never stop
the batch, a round trip checked by the offline engine; and the daemon killed mid-batch.
What must stay intact: each result is at its input's index; every success verifies offline
and holds its input's bytes; a failure leaves nothing under its output name; after a
SIGKILL every call either raised DaemonUnavailable or returned a verified result, and no
output exists for any file that did not succeed."""

import os
import random
import struct

import pytest

import ringcrypt
from conftest import Daemon, map_files_killed_midway, read_tree, temp_files, write

FILES = 5000


def test_map_files_5000_in_order_with_failures(daemon: Daemon) -> None:
    client = daemon.client()
    src = daemon.outside / "in"
    paths, expected = [], {}
    for i in range(FILES):
        rel = f"d{i % 20}/f{i:05d}"
        data = os.urandom(i % 3000)
        write(src / rel, data)
        paths.append(src / rel)
        expected[rel] = data
    # Failures mixed in: a missing input, an output that exists, a directory.
    missing, exists_at, directory = 10, 2500, 4999
    paths[missing] = src / "no-such-file"
    existing = daemon.outside / "out" / "d0" / f"f{exists_at:05d}.rcrypt"
    write(existing, b"keep me")
    paths[directory] = src / "d3"
    outputs = [daemon.outside / "out" / (str(p.relative_to(src)) + ".rcrypt") for p in paths]
    for out in outputs:
        out.parent.mkdir(parents=True, exist_ok=True)

    # No fsync: durability is not what this checks, and 10,000 fsyncs would dominate.
    results = client.map_files(
        "encrypt", paths, outputs=outputs, concurrency=48, connections=3, fsync=False
    )
    assert len(results) == FILES
    failures = {i: r for i, r in enumerate(results) if not isinstance(r, ringcrypt.FileResult)}
    assert sorted(failures) == [missing, exists_at, directory], failures
    assert isinstance(failures[missing], ringcrypt.NotFound)
    assert isinstance(failures[exists_at], ringcrypt.Exists)
    assert isinstance(failures[directory], ringcrypt.BadRequest)
    assert existing.read_bytes() == b"keep me"
    for i, r in enumerate(results):
        if i not in failures:
            assert (r.input, r.output) == (str(paths[i]), str(outputs[i]))

    # Every output, opened by the offline engine, holds its input's bytes.
    existing.unlink()
    opened = daemon.open_tree_offline(daemon.outside / "out", daemon.dir / "opened")
    for i in (missing, exists_at, directory):
        del expected[f"d{i % 20}/f{i:05d}"]
    assert opened == expected

    # And back through the daemon, by path this time (the outputs lie under the root).
    back = [daemon.root / "back" / f"{i}" for i in range(len(paths))]
    (daemon.root / "back").mkdir()
    sealed = [o for i, o in enumerate(outputs) if i not in failures]
    links = [daemon.root / "sealed" / f"{i}.rcrypt" for i in range(len(sealed))]
    (daemon.root / "sealed").mkdir()
    for s, link in zip(sealed, links):
        os.link(s, link)
    returned = client.map_files("decrypt", links, outputs=back[: len(links)], by_path=True, fsync=False)
    assert all(isinstance(r, ringcrypt.FileResult) for r in returned)
    plain_in_order = [expected[str(p.relative_to(src))] for i, p in enumerate(paths) if i not in failures]
    assert len(plain_in_order) == FILES - 3
    assert [b.read_bytes() for b in back[: len(links)]] == plain_in_order
    assert temp_files(daemon.dir) == []
    client.close()


def test_daemon_killed_mid_batch(daemon: Daemon) -> None:
    src = daemon.outside / "in"
    out = daemon.outside / "out"
    out.mkdir()
    paths = [write(src / f"f{i:04d}", os.urandom(8_000 + i)) for i in range(2000)]
    outputs = [out / f"f{i:04d}.rcrypt" for i in range(2000)]
    results = map_files_killed_midway(daemon, paths, outputs)
    ok = {i for i, r in enumerate(results) if isinstance(r, ringcrypt.FileResult)}
    others = [r for r in results if not isinstance(r, ringcrypt.FileResult)]
    assert all(isinstance(r, ringcrypt.DaemonUnavailable) for r in others), {type(r) for r in others}
    assert 200 <= len(ok) < 2000 and others, (len(ok), len(others))
    # Outputs exist for exactly the files that succeeded, no temp file is left, and each
    # output verifies offline with its input's bytes.
    assert sorted(os.listdir(out)) == sorted(outputs[i].name for i in ok)
    assert temp_files(daemon.dir) == []
    opened = daemon.open_tree_offline(out, daemon.dir / "opened")
    assert opened == {paths[i].name: paths[i].read_bytes() for i in ok}
    # A call after the kill is DaemonUnavailable too.
    late = daemon.client().map_files("encrypt", paths[:3], outputs=[out / "late0", out / "late1", out / "late2"])
    assert all(isinstance(r, ringcrypt.DaemonUnavailable) for r in late)
    assert not any((out / f"late{i}").exists() for i in range(3))
    assert read_tree(src).keys() == {p.name for p in paths}


def _default_acl(user: int, group: int, other: int) -> bytes:
    """A default ACL (user::, group::, other:: with these permission bits) as the kernel's
    system.posix_acl_default attribute holds it: version 2, then (tag, perm, id) entries."""
    entries = ((0x01, user), (0x04, group), (0x20, other))
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, p, 0xFFFFFFFF) for t, p in entries)


def test_map_files_outputs_keep_the_inputs_mode_and_time(daemon: Daemon) -> None:
    """Each output gets its input's permission bits and modification time, whether the
    process's umask keeps that mode (the temporary file is created with it) or would strip
    it, and in a directory whose default ACL would narrow it (both fixed by fchmod). What
    must stay intact: every output's mode and mtime equal its input's, its result says its
    own job and sizes, and its bytes open back to the input's."""
    client = daemon.client()
    src, out = daemon.outside / "modes", daemon.outside / "modes-out"
    acl_out = daemon.outside / "modes-acl"
    out.mkdir()
    acl_out.mkdir()
    try:
        os.setxattr(acl_out, "system.posix_acl_default", _default_acl(6, 0, 0))
    except OSError as err:
        pytest.skip(f"no POSIX ACLs on {acl_out}'s file system: {err}")
    # A file the ACL's directory creates with 0o644 asked comes out 0o600: the ACL applies.
    probe = os.open(acl_out / "probe", os.O_WRONLY | os.O_CREAT, 0o644)
    assert os.fstat(probe).st_mode & 0o777 == 0o600
    os.close(probe)
    os.unlink(acl_out / "probe")

    modes = [0o644, 0o640, 0o600, 0o664, 0o666, 0o444, 0o755, 0o604]
    paths, outputs, data = [], [], {}
    for i, mode in enumerate(modes * 2):
        p = write(src / f"f{i:02d}", os.urandom(100 + i), mode=mode)
        os.utime(p, ns=(1_500_000_000_000_000_000 + i, 1_600_000_000_123_456_789 + i))
        paths.append(p)
        outputs.append((out if i < len(modes) else acl_out) / f"f{i:02d}.rcrypt")
        data[p.name] = p.read_bytes()
    old_umask = os.umask(0o022)  # keeps 0o644, 0o640, 0o600, 0o444, 0o604; strips the rest
    try:
        results = client.map_files("encrypt", paths, outputs=outputs, fsync=False)
    finally:
        os.umask(old_umask)
    assert all(isinstance(r, ringcrypt.FileResult) for r in results), results
    for i, r in enumerate(results):  # the fields read from each `done`
        assert (r.op, r.input, r.output, r.skipped) == ("encrypt", str(paths[i]), str(outputs[i]), False)
        assert r.bytes_in == 100 + i and r.bytes_out > r.bytes_in and r.job and r.micros >= 0
    assert len({r.job for r in results}) == len(results)
    for p, o in zip(paths, outputs):
        st_in, st_out = p.stat(), o.stat()
        assert oct(st_out.st_mode & 0o7777) == oct(st_in.st_mode & 0o7777), o
        assert st_out.st_mtime_ns == st_in.st_mtime_ns, o
    opened = daemon.open_tree_offline(out, daemon.dir / "opened-modes")
    opened.update(daemon.open_tree_offline(acl_out, daemon.dir / "opened-modes-acl"))
    assert opened == data


def test_map_files_over_more_directories_than_it_keeps_open(daemon: Daemon) -> None:
    """Outputs spread over more directories than a batch keeps open (256), in no order, so
    directories are closed and opened again mid-batch. What must stay intact: every output
    lands in its own directory and opens back to its input, and the batch leaves no
    descriptor open behind it."""
    from ringcrypt.batch import MAX_OPEN_DIRS

    client = daemon.client()
    src, out = daemon.outside / "spread", daemon.outside / "spread-out"
    dirs = MAX_OPEN_DIRS + 44
    pairs = []
    for i in range(2 * dirs):
        rel = f"d{i % dirs:03d}/f{i:04d}"
        pairs.append((write(src / rel, os.urandom(i % 700)), out / (rel + ".rcrypt")))
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
    random.Random(15).shuffle(pairs)
    fds_before = len(os.listdir("/proc/self/fd"))
    results = client.map_files(
        "encrypt", [p for p, _ in pairs], outputs=[o for _, o in pairs], fsync=False
    )
    client.close()
    assert len(os.listdir("/proc/self/fd")) == fds_before
    assert all(isinstance(r, ringcrypt.FileResult) for r in results), results
    assert [r.output for r in results] == [str(o) for _, o in pairs]
    opened = daemon.open_tree_offline(out, daemon.dir / "opened-spread")
    assert opened == read_tree(src)
