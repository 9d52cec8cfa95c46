"""The "Python -> ringcryptd" rows of `cargo bench --bench e2e`: the pool script of
`e2e_pool.py` rewritten with the ringcrypt Python client (clients/python), as docs/python.md
shows it. `pool.map(encrypt_file, paths)` becomes `client.map_files("encrypt", paths)`.

    python3 e2e_client.py encrypt SRC OUT SOCKET [--by-path]
    python3 e2e_client.py decrypt SRC OUT SOCKET [--by-path]

encrypt writes OUT/<rel>.rcrypt for each regular file under SRC, decrypt OUT/<rel> for each
<rel>.rcrypt, mirroring SRC's directories. Single files go to the daemon as descriptors
(map_files' default); `--by-path` sends their paths instead (the files must then lie under
the daemon's allowed roots). The daemon runs with `--fsync never`, so the client is asked
for no fsync either. Prints "FILES BYTES" (plaintext bytes); any file that fails makes the
exit status nonzero with its error.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clients", "python"))

import ringcrypt  # noqa: E402

SUFFIX = ".rcrypt"


def pairs_for(op, src, out):
    """(input, output) pairs, with OUT mirroring SRC's directories."""
    inputs, outputs = [], []
    for root, _dirs, files in os.walk(src):
        target = os.path.join(out, os.path.relpath(root, src))
        os.makedirs(target, exist_ok=True)
        for name in sorted(files):
            if op == "encrypt":
                out_name = name + SUFFIX
            elif name.endswith(SUFFIX):
                out_name = name[: -len(SUFFIX)]
            else:
                raise ValueError(f"{os.path.join(root, name)}: no {SUFFIX} suffix")
            inputs.append(os.path.join(root, name))
            outputs.append(os.path.join(target, out_name))
    return inputs, outputs


def main():
    parser = argparse.ArgumentParser(description="The Python client rows of the e2e bench.")
    parser.add_argument("op", choices=["encrypt", "decrypt"])
    parser.add_argument("src")
    parser.add_argument("out")
    parser.add_argument("socket")
    parser.add_argument("--by-path", action="store_true")
    args = parser.parse_args()
    inputs, outputs = pairs_for(args.op, args.src, args.out)
    client = ringcrypt.Client(args.socket)
    results = client.map_files(
        args.op, inputs, outputs=outputs, fsync=False, by_path=args.by_path
    )
    failed = [(path, r) for path, r in zip(inputs, results) if not isinstance(r, ringcrypt.FileResult)]
    if failed:
        for path, err in failed[:10]:
            print(f"{path}: {err}", file=sys.stderr)
        sys.exit(f"{len(failed)} of {len(inputs)} files failed")
    plain = sum(r.bytes_in if args.op == "encrypt" else r.bytes_out for r in results)
    print(len(results), plain)


if __name__ == "__main__":
    main()
