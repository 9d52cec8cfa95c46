"""map_files, both backends: 5,000 files in order with per-file failures that never stop
the batch, a round trip checked by the offline engine; and the daemon killed mid-batch.
What must stay intact: each result is at its input's index; every success verifies offline
and holds its input's bytes; a failure leaves nothing under its output name; after a
SIGKILL every call either raised DaemonUnavailable or returned a verified result, and no
output exists for any file that did not succeed."""

import os
import threading
import time

import ringcrypt
from conftest import Daemon, read_tree, temp_files, write

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
    box = {}

    def run() -> None:
        box["results"] = daemon.client().map_files("encrypt", paths, outputs=outputs)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 60
    while len(os.listdir(out)) < 200 and time.monotonic() < deadline:
        time.sleep(0.005)
    daemon.kill()
    worker.join(60)
    assert not worker.is_alive(), "map_files hung after the daemon died"

    results = box["results"]
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
