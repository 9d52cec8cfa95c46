"""Direct IO against buffered IO on a real disk: the figures of docs/performance.md,
"Direct IO".

    cargo build --release
    python3 benches/direct_io.py DIR [--fsync always|never] [--sets big,mib] [--bin DIR]
    python3 benches/direct_io.py DIR --op decrypt --sets big

DIR must be on the disk to measure (ext4, say; not tmpfs) and have about 5 GiB free. The
script makes its data sets there once (`big`: one 1 GiB file, `mib`: 1000 files of 1 MiB,
`k256`: 2000 files of 256 KiB, below `auto`'s threshold, for `--sets k256`), then, for
each set, runs a fresh `ringcryptd --io direct` and a fresh `ringcryptd --io buffered`
(alternated, 3 runs each) and encrypts the set through `ringcrypt`. Before each run the input
is evicted from the page cache (`POSIX_FADV_DONTNEED`) and the previous output removed.

Printed per row, as medians of the 3 runs: wall time of the client; the daemon's CPU
(utime + stime of the process, io_uring workers included) and the shards' own part; the
growth of `Cached` in /proc/meminfo (other work on the machine moves it too); and what
`fincore` (util-linux) finds of the job's input and output files in the page cache after
the run, which only the job moves. Any failing command raises, so the exit status says.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import time


def cached_bytes():
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("Cached:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no Cached: in /proc/meminfo")


def files_of(path):
    if os.path.isdir(path):
        return [os.path.join(root, f) for root, _, names in os.walk(path) for f in names]
    return [path]


def evict(path):
    for name in files_of(path):
        fd = os.open(name, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def resident_mib(path):
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--raw", "-o", "RES", *files_of(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum(int(x) for x in out.split()) / 2**20


def cpu_seconds(pid, shards_only=False):
    """utime + stime of the process, or of its `shard-*` threads."""
    tick = os.sysconf("SC_CLK_TCK")
    if not shards_only:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as stat:
                text = stat.read()
        except OSError:
            continue
        if text[text.index("(") + 1 : text.rindex(")")].startswith("shard-"):
            fields = text.rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / tick


def make_sets(dir):
    big = os.path.join(dir, "big.bin")
    if not os.path.exists(big):
        block = os.urandom(1 << 20)
        with open(big, "wb") as f:
            for i in range(1024):
                f.write(block[:-8] + i.to_bytes(8, "little"))
    mib = os.path.join(dir, "mib")
    if not os.path.exists(mib):
        os.mkdir(mib)
        block = os.urandom(1 << 20)
        for i in range(1000):
            with open(os.path.join(mib, f"f{i:04}"), "wb") as f:
                f.write(block[:-8] + i.to_bytes(8, "little"))
    k256 = os.path.join(dir, "k256")
    if not os.path.exists(k256):
        os.mkdir(k256)
        block = os.urandom(256 << 10)
        for i in range(2000):
            with open(os.path.join(k256, f"f{i:04}"), "wb") as f:
                f.write(block[:-8] + i.to_bytes(8, "little"))
    os.sync()


def remove(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.unlink(path)


def run(args, io, what):
    sock = os.path.join(args.dir, "bench.sock")
    remove(sock)
    daemon = subprocess.Popen(
        [
            os.path.join(args.bin, "ringcryptd"),
            "--socket", sock,
            "--keys", os.path.join(args.dir, "keys.toml"),
            "--allow-root", args.dir,
            "--io", io,
            "--metrics", "off",
            "--fsync", args.fsync,
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        time.sleep(0.2)
        if what == "big" and args.op == "decrypt":
            src, out = os.path.join(args.dir, "big.sealed"), os.path.join(args.dir, "big.plain")
            job = ["decrypt", src, "-o", out]
        elif what == "big":
            src, out = os.path.join(args.dir, "big.bin"), os.path.join(args.dir, "big.rcrypt")
            job = ["encrypt", src, "-o", out]
        else:
            src, out = os.path.join(args.dir, what), os.path.join(args.dir, what + ".out")
            job = ["encrypt", "-r", src, "-o", out]
        remove(out)
        evict(src)
        os.sync()
        cached0, cpu0, started = cached_bytes(), cpu_seconds(daemon.pid), time.time()
        client = [os.path.join(args.bin, "ringcrypt"), "--socket", sock, *job]
        subprocess.run(client, check=True, capture_output=True)
        wall = time.time() - started
        cpu = cpu_seconds(daemon.pid) - cpu0
        shards = cpu_seconds(daemon.pid, shards_only=True)
        growth = (cached_bytes() - cached0) / 2**20
        resident = resident_mib(src) + resident_mib(out)
        remove(out)
        return wall, cpu, shards, growth, resident
    finally:
        daemon.terminate()
        daemon.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir")
    parser.add_argument("--fsync", default="always", choices=["always", "never"])
    parser.add_argument("--sets", default="big,mib")
    parser.add_argument("--op", default="encrypt", choices=["encrypt", "decrypt"])
    parser.add_argument("--bin", default="target/release")
    args = parser.parse_args()
    args.bin = os.path.abspath(args.bin)
    args.dir = os.path.abspath(args.dir)
    os.makedirs(args.dir, exist_ok=True)
    keys = os.path.join(args.dir, "keys.toml")
    if not os.path.exists(keys):
        ringcrypt = os.path.join(args.bin, "ringcrypt")
        subprocess.run([ringcrypt, "keygen", "-o", keys], check=True, capture_output=True)
        os.chmod(keys, 0o600)
    make_sets(args.dir)
    sealed = os.path.join(args.dir, "big.sealed")
    if args.op == "decrypt" and not os.path.exists(sealed):
        ringcrypt = os.path.join(args.bin, "ringcrypt")
        big = os.path.join(args.dir, "big.bin")
        offline = [ringcrypt, "--keys", keys, "encrypt", big, "-o", sealed]
        subprocess.run(offline, check=True, capture_output=True)
    if args.op == "decrypt" and args.sets != "big":
        parser.error("--op decrypt measures the big file only: --sets big")
    with open("/proc/loadavg") as load:
        print("load average before:", load.read().strip())
    for what in args.sets.split(","):
        results = {"direct": [], "buffered": []}
        for _ in range(3):
            for io in results:
                results[io].append(run(args, io, what))
        mib = {"big": 1024, "mib": 1000, "k256": 500}[what]
        for io, runs in results.items():
            med = [statistics.median(r[i] for r in runs) for i in range(5)]
            print(
                f"{what} {args.op} fsync={args.fsync} io={io}: wall {med[0]:.3f} s, daemon CPU "
                f"{med[1]:.2f} s (shards {med[2]:.2f}), {1000 * med[1] / mib:.3f} ms per MiB, "
                f"Cached growth {med[3]:.0f} MiB, job files resident {med[4]:.1f} MiB"
            )
    with open("/proc/loadavg") as load:
        print("load average after:", load.read().strip())


if __name__ == "__main__":
    main()
