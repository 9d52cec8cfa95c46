#!/bin/bash
# Daemon CPU per file (20,000 x 4 KiB) or per MiB (1000 x 1 MiB) for one encrypt of a tree
# on tmpfs, from the daemon's utime + stime in /proc/<pid>/stat (its io_uring workers are
# threads of the process, so they are counted). A fresh daemon per run: 2 shards (one per
# core), --fsync never, metrics off.
#
#   benches/per_file_cpu.sh BINDIR small|mib
#   ATTACH="perf stat -e io_uring:io_uring_queue_async_work" benches/per_file_cpu.sh BINDIR small
#
# BINDIR holds ringcrypt and ringcryptd (say target/release). ATTACH, if set, is a command
# run with `-p <daemon pid>` while the tree is encrypted, and stopped with SIGINT after it
# (a profiler). To compare two builds, copy each one's binaries aside and alternate runs.
set -euo pipefail
if [ $# -ne 2 ] || { [ "$2" != small ] && [ "$2" != mib ]; }; then
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
BIN=$1
SET=$2
S=$(mktemp -d -p /dev/shm)   # a new private directory on tmpfs, removed on exit
DPID=
cleanup() {
    if [ -n "$DPID" ]; then kill "$DPID" 2>/dev/null || true; wait "$DPID" 2>/dev/null || true; fi
    rm -rf "$S"
}
trap cleanup EXIT
mkdir "$S/in"
"$BIN/ringcrypt" keygen --name bench >"$S/keys.toml"
chmod 600 "$S/keys.toml"
if [ "$SET" = small ]; then
    N=20000
    python3 - "$S/in" <<'PY'
import os, sys
for i in range(200):
    sub = os.path.join(sys.argv[1], "d%03d" % i)
    os.mkdir(sub)
    for j in range(100):
        with open(os.path.join(sub, "f%03d" % j), "wb") as f:
            f.write(os.urandom(4096))
PY
else
    N=1000
    for i in $(seq "$N"); do head -c 1048576 /dev/urandom >"$S/in/f$i"; done
fi
"$BIN/ringcryptd" --socket "$S/sock" --keys "$S/keys.toml" --allow-root "$S" \
    --fsync never --metrics off --log-level warn 2>"$S/log" &
DPID=$!
for _ in $(seq 100); do [ -S "$S/sock" ] && break; sleep 0.05; done
sleep 0.2
read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$DPID/stat")
APID=
if [ -n "${ATTACH:-}" ]; then $ATTACH -p "$DPID" & APID=$!; sleep 1; fi
t0=$(date +%s.%N)
"$BIN/ringcrypt" --socket "$S/sock" encrypt -r "$S/in" -o "$S/out" --quiet
t1=$(date +%s.%N)
if [ -n "$APID" ]; then kill -INT "$APID"; wait "$APID" || true; fi
read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$DPID/stat")
n=$(find "$S/out" -type f | wc -l)
if [ "$n" != "$N" ]; then echo "only $n of $N outputs" >&2; exit 1; fi
python3 - "$SET" "$N" "$(getconf CLK_TCK)" "$u0" "$s0" "$u1" "$s1" "$t0" "$t1" <<'PY'
import sys
kind, n, tck = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
u0, s0, u1, s1 = (int(x) for x in sys.argv[4:8])
t0, t1 = float(sys.argv[8]), float(sys.argv[9])
user, system = (u1 - u0) / tck, (s1 - s0) / tck
scale, unit = (1e6 / n, "us per file") if kind == "small" else (1e3 / n, "ms per MiB")
print("%s: daemon CPU %.2f %s (user %.2f, system %.2f), wall %.3f s"
      % (kind, (user + system) * scale, unit, user * scale, system * scale, t1 - t0))
PY
