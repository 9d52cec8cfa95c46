"""The blocking client against the real daemon, both backends: each method, descriptor
passing, the error classes, timeouts and cancellation. What must stay intact: inputs are
never changed, an output appears only complete and verifying (checked by the offline
engine), and a failed or cancelled call leaves nothing under its output name."""

import os
import re
import socket
import threading
import time
from pathlib import Path

import pytest

import ringcrypt
from conftest import Daemon, stalled_fifo, temp_files, write

HEADER_KEY_ID = slice(16, 32)  # docs/format.md: the key id's place in the header


def key_ids(client: ringcrypt.Client) -> dict:
    return {k.name: k.id for k in client.keys().keys}


def test_ping_keys_stats_status_jobs_cancel(daemon: Daemon) -> None:
    client = daemon.client()
    pong = client.ping()
    assert pong.backend == daemon.backend and pong.shards == 2 and pong.version

    ring = client.keys()
    assert ring.default == "k2"
    assert [(k.name, k.kind, k.state) for k in ring.keys] == [
        ("k1", "ringcrypt", "active"),
        ("k2", "ringcrypt", "active"),
    ]
    assert all(re.fullmatch(r"[0-9a-f]{32}", k.id or "") for k in ring.keys)

    before = client.stats()
    assert [s.shard for s in before] == [0, 1]

    plain = write(daemon.root / "a.bin", os.urandom(70_000))
    result = client.encrypt(plain)
    status = client.status(result.job)
    assert (status.state, status.op, status.bytes_done) == ("done", "encrypt", 70_000)
    assert any(j.job == result.job and j.state == "done" for j in client.jobs())
    after = client.stats()
    assert sum(s.jobs_done for s in after) == sum(s.jobs_done for s in before) + 1
    assert sum(s.bytes_in for s in after) - sum(s.bytes_in for s in before) == 70_000

    # An ended job cannot be cancelled; an unknown one is not found; a malformed id is refused.
    with pytest.raises(ringcrypt.NotFound) as ended:
        client.cancel(result.job)
    assert ended.value.code == "not_found" and result.job in ended.value.message
    with pytest.raises(ringcrypt.NotFound):
        client.status("1-99999")
    with pytest.raises(ringcrypt.BadRequest) as bad:
        client.status("not-a-job")
    assert "not-a-job" in bad.value.message
    client.close()


def test_encrypt_decrypt_rewrap_one_file(daemon: Daemon) -> None:
    client = daemon.client()
    data = os.urandom(300_001)
    plain = write(daemon.root / "doc.bin", data, mode=0o640)
    os.utime(plain, (1_600_000_000, 1_600_000_000))

    sealed = client.encrypt(plain, key="k1")
    out = Path(sealed.output)
    assert out == daemon.root / "doc.bin.rcrypt" and sealed.input == str(plain)
    assert (sealed.bytes_in, sealed.bytes_out) == (len(data), out.stat().st_size)
    assert out.stat().st_mode & 0o777 == 0o640 and out.stat().st_mtime == 1_600_000_000
    assert out.read_bytes()[HEADER_KEY_ID].hex() == key_ids(client)["k1"]
    assert daemon.open_offline(out, daemon.dir / "check") == data

    opened = client.decrypt(out, daemon.root / "copy.bin")
    assert (daemon.root / "copy.bin").read_bytes() == data and opened.bytes_out == len(data)
    with pytest.raises(ringcrypt.Exists):
        client.decrypt(out, daemon.root / "copy.bin")
    client.decrypt(out, daemon.root / "copy.bin", overwrite=True)
    assert (daemon.root / "copy.bin").read_bytes() == data

    # rewrap to a new name, then in place: both end under the default key, k2.
    client.rewrap(out, daemon.root / "re.rcrypt")
    assert (daemon.root / "re.rcrypt").read_bytes()[HEADER_KEY_ID].hex() == key_ids(client)["k2"]
    client.rewrap(out, in_place=True)
    assert out.read_bytes()[HEADER_KEY_ID].hex() == key_ids(client)["k2"]
    assert daemon.open_offline(out, daemon.dir / "check") == data
    assert plain.read_bytes() == data, "the input was changed"
    assert temp_files(daemon.dir) == []

    # Empty files round trip too.
    empty = write(daemon.root / "empty", b"")
    client.encrypt(empty)
    assert client.decrypt(daemon.root / "empty.rcrypt", daemon.root / "empty.out").bytes_out == 0
    assert (daemon.root / "empty.out").read_bytes() == b""
    client.close()


def test_single_files_go_by_descriptor_outside_every_root(daemon: Daemon) -> None:
    client = daemon.client()
    data = os.urandom(123_456)
    plain = write(daemon.outside / "private.txt", data, mode=0o600)
    sealed = client.encrypt(plain)
    assert daemon.open_offline(Path(sealed.output), daemon.dir / "check") == data
    client.decrypt(sealed.output, daemon.outside / "back.txt")
    assert (daemon.outside / "back.txt").read_bytes() == data
    assert re.search(r"op=encrypt fds input=\"[^\"]*outside/private.txt\"", daemon.log_text())
    # A name that is not UTF-8 is no obstacle by descriptor (the daemon sees it with U+FFFD,
    # only in messages); the output keeps the exact bytes of its name.
    odd = write(daemon.outside / os.fsdecode(b"caf\xe9.txt"), data)
    odd_out = client.encrypt(odd).output
    assert os.fsencode(odd_out).endswith(b"/caf\xe9.txt.rcrypt")
    assert daemon.open_offline(Path(odd_out), daemon.dir / "check") == data
    assert "caf\ufffd.txt" in daemon.log_text()
    # The daemon kept no descriptor of them.
    assert not [t for t in daemon.fds() if str(daemon.outside) in t]
    # The same directory by path is refused: it is under no allowed root.
    with pytest.raises(ringcrypt.ForbiddenPath) as refused:
        client.encrypt(daemon.outside, daemon.outside / "tree.rcrypt", tree=True)
    assert "outside every allowed root" in refused.value.message
    assert not (daemon.outside / "tree.rcrypt").exists()
    client.close()


def test_errors_are_their_codes_classes_and_lose_nothing(daemon: Daemon) -> None:
    client = daemon.client()
    data = os.urandom(200_000)
    plain = write(daemon.root / "p.bin", data)
    sealed = Path(client.encrypt(plain).output)

    # One changed byte in the last chunk: auth_failed, and no output at all.
    tampered = write(daemon.root / "t.rcrypt", sealed.read_bytes())
    raw = bytearray(tampered.read_bytes())
    raw[-40] ^= 1
    tampered.write_bytes(bytes(raw))
    with pytest.raises(ringcrypt.AuthFailed) as failed:
        client.decrypt(tampered, daemon.root / "t.out")
    assert failed.value.code == "auth_failed" and failed.value.job
    assert not (daemon.root / "t.out").exists()

    with pytest.raises(ringcrypt.BadFormat):
        client.decrypt(plain, daemon.root / "p.out")
    with pytest.raises(ringcrypt.UnknownKey):
        client.encrypt(plain, daemon.root / "k.rcrypt", key="nope")
    with pytest.raises(ringcrypt.Exists):
        client.encrypt(plain)
    with pytest.raises(ringcrypt.NotFound) as missing:
        client.encrypt(daemon.root / "missing")
    assert "missing" in missing.value.message
    with pytest.raises(ringcrypt.BadRequest):
        client.encrypt(sealed, sealed, overwrite=True)
    with pytest.raises(ValueError):
        client.decrypt(plain)  # no .rcrypt: no output name to derive
    with pytest.raises(ValueError):
        client.rewrap(sealed)  # needs an output or in_place
    assert not list(daemon.root.glob("*.out")) and not (daemon.root / "k.rcrypt").exists()
    assert plain.read_bytes() == data and temp_files(daemon.dir) == []

    # All of them are RingcryptError, with the message and code.
    assert issubclass(ringcrypt.AuthFailed, ringcrypt.RingcryptError)
    assert str(failed.value).endswith("[auth_failed]")

    nowhere = ringcrypt.Client(daemon.dir / "no.sock")
    with pytest.raises(ringcrypt.DaemonUnavailable) as down:
        nowhere.ping()
    assert "no.sock" in down.value.message
    client.close()


def test_timeout_cancels_the_job_and_links_nothing(daemon: Daemon) -> None:
    client = daemon.client()
    # The input never ends (a FIFO held open and never written), so the job is still
    # running when the timeout comes, however fast the daemon; `accepted` comes at once.
    with stalled_fifo(daemon.root / "stalled") as stalled:
        with pytest.raises(ringcrypt.Timeout) as timed_out:
            client.encrypt(stalled, timeout=2.0)
        job = timed_out.value.job
        assert job, "the job had been accepted, so the timeout names it"
        # The timeout cancelled the job, and nothing appears under the output name, since
        # only this process could link it.
        for _ in range(1500):
            state = client.status(job).state
            if state not in ("queued", "running"):
                break
            time.sleep(0.02)
        assert state == "cancelled", state
    assert not (daemon.root / "stalled.rcrypt").exists()
    assert temp_files(daemon.dir) == []

    # A server that accepts and never answers: the short requests' timeout.
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(str(daemon.dir / "silent.sock"))
    silent.listen(4)
    with pytest.raises(ringcrypt.Timeout):
        ringcrypt.Client(daemon.dir / "silent.sock").ping(timeout=0.2)
    silent.close()
    client.close()


def test_cancel_a_running_file_and_a_tree(daemon: Daemon) -> None:
    client = daemon.client()
    big = write(daemon.root / "big.bin", os.urandom(1 << 20) * 128)
    outcome = {}

    def run() -> None:
        try:
            outcome["result"] = client.encrypt(big)
        except ringcrypt.RingcryptError as err:
            outcome["error"] = err

    worker = threading.Thread(target=run)
    worker.start()
    job = None
    for _ in range(1500):
        job = next((j.job for j in client.jobs() if j.input == str(big) and j.state == "running"), None)
        if job:
            break
        time.sleep(0.01)
    assert job, "the big file's job never showed as running"
    client.cancel(job)
    worker.join(60)
    assert isinstance(outcome.get("error"), ringcrypt.Cancelled), outcome
    assert outcome["error"].job == job
    assert not (daemon.root / "big.bin.rcrypt").exists()

    tree = daemon.root / "tree"
    for i in range(600):
        write(tree / f"d{i % 7}" / f"f{i}", os.urandom(40_000))
    running = client.encrypt(tree, tree=True)
    assert running.job
    running.cancel()
    with pytest.raises(ringcrypt.Cancelled):
        for _event in running:
            pass
    assert client.status(running.job).state == "cancelled"
    # Files handed out before the cancel finished whole; nothing is partial.
    out = daemon.root / "tree.rcrypt"
    done = sorted(p for p in out.rglob("*") if p.is_file())
    assert len(done) < 600
    if done:
        opened = daemon.open_tree_offline(out, daemon.dir / "opened")
        assert len(opened) == len(done)
        assert all(opened[rel] == (tree / rel).read_bytes() for rel in opened)
    assert temp_files(daemon.dir) == []
    client.close()


def test_a_pooled_connection_the_daemon_closed_is_not_reused(daemon: Daemon) -> None:
    client = daemon.client()
    plain = write(daemon.root / "r.bin", os.urandom(5000))
    assert client.ping().backend == daemon.backend  # leaves one idle connection in the pool
    daemon.stop()
    with pytest.raises(ringcrypt.DaemonUnavailable):
        daemon.client().ping()
    daemon.start()
    # The pooled connection saw the old daemon go; the calls take new ones and succeed.
    assert client.ping().backend == daemon.backend
    assert daemon.open_offline(Path(client.encrypt(plain).output), daemon.dir / "c") == plain.read_bytes()
    client.close()
