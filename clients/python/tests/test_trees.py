"""Trees through the blocking and the asyncio client, both backends: typed progress events,
then the summary, last; skipped specials; a resume with skip_existing; a decrypt back. What
must stay intact: every output verifies offline and holds its input's bytes, inputs are
unchanged, and the summary's counts match the tree."""

import asyncio
import os
from pathlib import Path

import pytest

import ringcrypt
from conftest import Daemon, read_tree, stalled_fifo, temp_files, write


def make_tree(top: Path, files: int) -> dict:
    expected = {}
    for i in range(files):
        rel = f"d{i % 5}/sub{i % 3}/f{i}.bin"
        data = os.urandom(i * 37 % 20_000)
        write(top / rel, data)
        expected[rel] = data
    os.symlink("/etc/passwd", top / "link")
    os.mkfifo(top / "fifo")
    return expected


def test_tree_with_progress_summary_resume_and_back(daemon: Daemon) -> None:
    client = daemon.client()
    src = daemon.root / "photos"
    expected = make_tree(src, 400)

    job = client.encrypt(src, tree=True)
    events = list(job)
    summary = events[-1]
    assert isinstance(summary, ringcrypt.TreeSummary) and summary.job == job.job
    progress = events[:-1]
    assert progress and all(isinstance(e, ringcrypt.Progress) for e in progress)
    done = [e.files_done for e in progress]
    assert done == sorted(done) and all(e.files_done <= e.files_total <= 400 for e in progress)
    assert (summary.files_ok, summary.files_failed, summary.files_skipped) == (400, 0, 2)
    assert summary.ok and summary.bytes_in == sum(map(len, expected.values()))
    assert sorted((s.path, s.reason) for s in summary.skipped) == [
        (str(src / "fifo"), "fifo"),
        (str(src / "link"), "symbolic link"),
    ]
    sealed = daemon.root / "photos.rcrypt"
    opened = daemon.open_tree_offline(sealed, daemon.dir / "opened")
    assert opened == expected

    # Run again with skip_existing: every output verifies, so every file is skipped.
    again = client.encrypt(src, tree=True, skip_existing=True).result()
    assert (again.files_ok, again.files_skipped) == (0, 402)

    back = client.decrypt(sealed, daemon.root / "back", tree=True).result()
    assert back.files_ok == 400 and back.ok
    assert read_tree(daemon.root / "back") == expected
    assert all((src / rel).read_bytes() == data for rel, data in expected.items())
    assert temp_files(daemon.dir) == []

    # A tree whose input is missing never starts.
    with pytest.raises(ringcrypt.NotFound):
        client.encrypt(daemon.root / "nothing", tree=True)
    client.close()


def test_async_client_tree_files_and_timeouts(daemon: Daemon) -> None:
    src = daemon.root / "a"
    expected = {f"f{i}": os.urandom(1000 + i) for i in range(120)}
    for rel, data in expected.items():
        write(src / rel, data)
    single = write(daemon.outside / "one.bin", os.urandom(99_999))

    async def main() -> None:
        async with ringcrypt.AsyncClient(daemon.socket) as client:
            pong = await client.ping()
            assert pong.backend == daemon.backend
            assert (await client.keys()).default == "k2"
            job = await client.encrypt(src, tree=True)
            events = [e async for e in job]
            assert isinstance(events[-1], ringcrypt.TreeSummary) and events[-1].files_ok == 120
            assert all(isinstance(e, ringcrypt.Progress) for e in events[:-1])

            # Twenty single files at once, by descriptor, outside the roots.
            outs = [daemon.outside / f"c{i}.rcrypt" for i in range(20)]
            results = await asyncio.gather(*(client.encrypt(single, out) for out in outs))
            assert [r.output for r in results] == [str(o) for o in outs]
            await client.decrypt(outs[7], daemon.outside / "one.back")
            assert (daemon.outside / "one.back").read_bytes() == single.read_bytes()
            assert (await client.status(results[0].job)).state == "done"
            assert any(j.job == results[0].job for j in await client.jobs())
            assert [s.shard for s in await client.stats()] == [0, 1]
            with pytest.raises(ringcrypt.NotFound):
                await client.cancel(results[0].job)  # it ended
            await client.rewrap(outs[1], daemon.outside / "re.rcrypt")

            # A job that cannot end by itself (its input a FIFO held open and never
            # written): the timeout, then a task cancelled mid-job, each link nothing.
            with stalled_fifo(daemon.root / "stalled") as stalled:
                with pytest.raises(ringcrypt.Timeout) as timed_out:
                    await client.encrypt(stalled, timeout=2.0)
                assert timed_out.value.job
                task = asyncio.ensure_future(client.encrypt(stalled, daemon.root / "stalled2.rcrypt"))
                await asyncio.sleep(0.3)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            with pytest.raises(ringcrypt.Exists):
                await client.encrypt(single, outs[0])
            mapped = await client.map_files("decrypt", outs[:5], outputs=[daemon.outside / f"m{i}" for i in range(5)])
            assert all(isinstance(r, ringcrypt.FileResult) for r in mapped)

    asyncio.run(main())
    assert daemon.open_tree_offline(daemon.root / "a.rcrypt", daemon.dir / "o") == expected
    for i in range(20):
        assert daemon.open_offline(daemon.outside / f"c{i}.rcrypt", daemon.dir / "x") == single.read_bytes()
    for i in range(5):
        assert (daemon.outside / f"m{i}").read_bytes() == single.read_bytes()
    assert daemon.open_offline(daemon.outside / "re.rcrypt", daemon.dir / "x") == single.read_bytes()
    assert not (daemon.root / "stalled.rcrypt").exists()
    assert not (daemon.root / "stalled2.rcrypt").exists()
    assert temp_files(daemon.dir) == []
