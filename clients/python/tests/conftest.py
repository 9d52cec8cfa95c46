"""The real ``ringcryptd`` for the Python client's tests, on a temp directory:

    DIR/keys.toml   0600 ring: keys k1 and k2, default k2
    DIR/d.sock      the socket
    DIR/d.log       the daemon's stderr (its audit lines)
    DIR/root/       the only allowed root
    DIR/outside/    a directory outside every root

started as ``ringcryptd --socket S --keys K --allow-root R --shards 2 --fsync never
--metrics off`` with ``RINGCRYPT_BACKEND`` set to each backend in turn (the ``daemon``
fixture is parametrized), ready once ``ping`` answers with that backend.

``tests/python.rs`` runs this suite from ``cargo test``, passing the binaries it built in
``RINGCRYPTD`` and ``RINGCRYPT_CLI``; outputs are checked with the CLI's offline engine
(``ringcrypt --keys K decrypt``), which shares no code path with the daemon's socket.
"""

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ringcrypt  # noqa: E402

START_TIMEOUT = 10.0
STOP_TIMEOUT = 40.0
TEMP_PREFIX = ".ringcrypt-tmp-"


def _binary(var: str) -> str:
    path = os.environ.get(var)
    if not path or not os.access(path, os.X_OK):
        raise RuntimeError(
            f"{var} must name the built binary; run this suite through "
            "`cargo test --features test-hooks --test python`"
        )
    return path


class Daemon:
    def __init__(self, base: Path, backend: str) -> None:
        self.dir = base
        self.backend = backend
        self.root = base / "root"
        self.outside = base / "outside"
        self.root.mkdir()
        self.outside.mkdir()
        self.socket = base / "d.sock"
        self.keys = base / "keys.toml"
        self.log = base / "d.log"
        ring = 'default = "k2"\n' + "".join(
            f'[[key]]\nname = "{name}"\nsecret = "{secrets.token_hex(32)}"\n' for name in ("k1", "k2")
        )
        fd = os.open(self.keys, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(ring)
        self.proc: Optional[subprocess.Popen] = None
        self.start()

    def start(self) -> None:
        env = dict(os.environ, RINGCRYPT_BACKEND=self.backend)
        for var in ("RINGCRYPT_SOCKET", "RINGCRYPT_KEYS", "RINGCRYPT_FAILPOINT"):
            env.pop(var, None)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    _binary("RINGCRYPTD"),
                    "--socket", str(self.socket),
                    "--keys", str(self.keys),
                    "--allow-root", str(self.root),
                    "--shards", "2",
                    "--fsync", "never",
                    "--metrics", "off",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
            )
        try:
            pong = self._wait_for_pong()
        except BaseException:
            # A daemon that never answered is not left running behind the failed test.
            self.proc.kill()
            self.proc.wait()
            raise
        assert pong.backend == self.backend, f"RINGCRYPT_BACKEND={self.backend} not honoured: {pong}"

    def _wait_for_pong(self) -> ringcrypt.Pong:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        client = ringcrypt.Client(self.socket)
        try:
            while True:
                assert self.proc.poll() is None, f"ringcryptd exited at start:\n{self.log_text()}"
                try:
                    return client.ping(timeout=1.0)
                except (ringcrypt.DaemonUnavailable, ringcrypt.Timeout):
                    # Not listening yet, or (on a loaded machine) listening but not answering.
                    assert time.monotonic() < deadline, f"no pong within {START_TIMEOUT} s:\n{self.log_text()}"
                    time.sleep(0.02)
        finally:
            client.close()

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def client(self) -> ringcrypt.Client:
        return ringcrypt.Client(self.socket)

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing of the daemon's runs after it."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT)

    def stop(self) -> None:
        """SIGTERM; the daemon must exit 0 in time (unless a test killed it)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"ringcryptd ignored SIGTERM:\n{self.log_text()}")
        assert code == 0, f"ringcryptd exited {code} after SIGTERM:\n{self.log_text()}"

    def fds(self) -> List[str]:
        """What the daemon's descriptors point to now."""
        assert self.proc is not None
        fd_dir = Path(f"/proc/{self.proc.pid}/fd")
        targets = []
        for entry in fd_dir.iterdir():
            try:
                targets.append(os.readlink(entry))
            except FileNotFoundError:
                pass
        return targets

    # -- checks with the offline engine ----------------------------------------------------
    def offline(self, *args: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RINGCRYPT_")}
        return subprocess.run(
            [_binary("RINGCRYPT_CLI"), "--keys", str(self.keys), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )

    def open_offline(self, sealed: Path, out: Path) -> bytes:
        """The plaintext of ``sealed`` by the offline engine; fails the test if it does not
        verify."""
        run = self.offline("decrypt", str(sealed), "-o", str(out))
        assert run.returncode == 0, f"{sealed} does not verify offline: {run.stderr}"
        data = out.read_bytes()
        out.unlink()
        return data

    def open_tree_offline(self, sealed_dir: Path, out_dir: Path) -> Dict[str, bytes]:
        """Every file of a sealed tree opened by the offline engine, by relative plaintext
        name; fails the test if any does not verify."""
        run = self.offline("decrypt", "-r", str(sealed_dir), "-o", str(out_dir), "--quiet")
        assert run.returncode == 0, f"{sealed_dir} does not verify offline: {run.stderr}"
        return read_tree(out_dir)


def read_tree(top: Path) -> Dict[str, bytes]:
    files = {}
    for dirpath, _dirs, names in os.walk(top):
        for name in names:
            path = Path(dirpath) / name
            files[str(path.relative_to(top))] = path.read_bytes()
    return files


def temp_files(top: Path) -> List[str]:
    return [
        os.path.join(d, n) for d, _s, names in os.walk(top) for n in names if n.startswith(TEMP_PREFIX)
    ]


@pytest.fixture(params=["uring", "sync"])
def daemon(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path, request.param)
    try:
        yield d
    finally:
        d.stop()


@contextlib.contextmanager
def stalled_fifo(path: Path) -> Iterator[Path]:
    """A FIFO that this process holds open for writing and never writes to: a job reading it
    waits, however fast the daemon is, until it is cancelled (no end of input comes while
    the block lasts)."""
    os.mkfifo(path)
    held = os.open(path, os.O_RDWR | os.O_CLOEXEC)  # a writer, without blocking
    try:
        yield path
    finally:
        os.close(held)


def write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def map_files_killed_midway(daemon: "Daemon", paths: List[Path], outputs: List[Path], **options: Any) -> List[Any]:
    """``map_files("encrypt", paths, outputs=outputs, **options)`` on a thread, the daemon
    SIGKILLed once 200 outputs exist; the results, after asserting the call came back."""
    box: Dict[str, List[Any]] = {}

    def run() -> None:
        box["results"] = daemon.client().map_files("encrypt", paths, outputs=outputs, **options)

    watched = outputs[0].parent
    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 60
    while len(os.listdir(watched)) < 200 and time.monotonic() < deadline:
        time.sleep(0.005)
    daemon.kill()
    worker.join(60)
    assert not worker.is_alive(), "map_files hung after the daemon died"
    return box["results"]
