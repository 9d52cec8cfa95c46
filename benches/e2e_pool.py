"""The Python baseline of `cargo bench --bench e2e`: the script people write today.

A `ProcessPoolExecutor` with one worker per core maps a per-file function over every
regular file under SRC (or over SRC itself when it is a file), using the `cryptography`
package: AES-256-CBC with PKCS7 padding and a random IV per file, then HMAC-SHA256 over
IV || ciphertext (encrypt-then-MAC). An encrypted file is IV (16) || ciphertext || tag (32).

    python3 e2e_pool.py encrypt SRC OUT KEYFILE WORKERS [--chunksize default|tuned]
    python3 e2e_pool.py decrypt SRC OUT KEYFILE WORKERS [--chunksize default|tuned]

encrypt writes OUT/<rel>.enc for each file, decrypt OUT/<rel> for each <rel>.enc.

`--chunksize default` (the default) calls `pool.map(fn, files)` as most scripts do, so the
standard library hands the workers one file per task (chunksize 1), and the round trip
through the pool for every file weighs on small files. `--chunksize tuned` hands
them batches of max(1, min(64, files // (workers * 4))) files, which takes that overhead
off small files while still giving every worker several batches to balance.

KEYFILE holds 64 bytes in hex: the AES key, then the HMAC key. Files are processed in
1 MiB pieces so a large file never sits in memory whole; decryption verifies the tag over
the whole file before it decrypts a byte (a second pass when the file is larger than one
piece), as an authenticated format must. Prints "FILES BYTES" (plaintext bytes) at the end;
any failure raises, so the exit status is nonzero.
"""

import argparse
import os
from concurrent.futures import ProcessPoolExecutor

from cryptography.hazmat.primitives import hashes, hmac, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

PIECE = 1 << 20
IV_BYTES = 16
TAG_BYTES = 32
SUFFIX = ".enc"

ENC_KEY = None
MAC_KEY = None


def init(enc_key, mac_key):
    global ENC_KEY, MAC_KEY
    ENC_KEY = enc_key
    MAC_KEY = mac_key


def seal(job):
    src, dst = job
    iv = os.urandom(IV_BYTES)
    encryptor = Cipher(algorithms.AES(ENC_KEY), modes.CBC(iv)).encryptor()
    padder = padding.PKCS7(128).padder()
    mac = hmac.HMAC(MAC_KEY, hashes.SHA256())
    plain = 0
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.write(iv)
        mac.update(iv)
        while True:
            piece = fin.read(PIECE)
            if not piece:
                break
            plain += len(piece)
            ct = encryptor.update(padder.update(piece))
            mac.update(ct)
            fout.write(ct)
        ct = encryptor.update(padder.finalize()) + encryptor.finalize()
        mac.update(ct)
        fout.write(ct)
        fout.write(mac.finalize())
    return plain


def unseal(job):
    src, dst = job
    with open(src, "rb") as fin:
        size = os.fstat(fin.fileno()).st_size
        if size < IV_BYTES + 16 + TAG_BYTES or (size - IV_BYTES - TAG_BYTES) % 16:
            raise ValueError(f"{src}: not an encrypted file ({size} bytes)")
        body = size - TAG_BYTES
        small = size <= PIECE
        data = fin.read() if small else None
        # Pass 1: the tag over IV || ciphertext, checked in constant time before any
        # plaintext is produced.
        mac = hmac.HMAC(MAC_KEY, hashes.SHA256())
        if small:
            mac.update(data[:body])
            tag = data[body:]
        else:
            left = body
            while left:
                piece = fin.read(min(PIECE, left))
                if not piece:
                    raise ValueError(f"{src}: shrank while being read")
                mac.update(piece)
                left -= len(piece)
            tag = fin.read(TAG_BYTES)
        mac.verify(tag)
        # Pass 2: decrypt and unpad.
        if small:
            iv = data[:IV_BYTES]
        else:
            fin.seek(0)
            iv = fin.read(IV_BYTES)
        decryptor = Cipher(algorithms.AES(ENC_KEY), modes.CBC(iv)).decryptor()
        unpadder = padding.PKCS7(128).unpadder()
        plain = 0
        with open(dst, "wb") as fout:
            if small:
                pt = unpadder.update(decryptor.update(data[IV_BYTES:body]))
                plain += len(pt)
                fout.write(pt)
            else:
                left = body - IV_BYTES
                while left:
                    piece = fin.read(min(PIECE, left))
                    if not piece:
                        raise ValueError(f"{src}: shrank while being read")
                    left -= len(piece)
                    pt = unpadder.update(decryptor.update(piece))
                    plain += len(pt)
                    fout.write(pt)
            pt = unpadder.update(decryptor.finalize()) + unpadder.finalize()
            plain += len(pt)
            fout.write(pt)
    return plain


def jobs_for(op, src, out):
    """(input, output) pairs, with OUT mirroring SRC's directories."""
    if os.path.isfile(src):
        walk = [(os.path.dirname(src), [], [os.path.basename(src)])]
        base = os.path.dirname(src)
    else:
        walk = os.walk(src)
        base = src
    jobs = []
    for root, _dirs, files in walk:
        target = os.path.join(out, os.path.relpath(root, base))
        os.makedirs(target, exist_ok=True)
        for name in sorted(files):
            if op == "encrypt":
                out_name = name + SUFFIX
            elif name.endswith(SUFFIX):
                out_name = name[: -len(SUFFIX)]
            else:
                raise ValueError(f"{os.path.join(root, name)}: no {SUFFIX} suffix")
            jobs.append((os.path.join(root, name), os.path.join(target, out_name)))
    return jobs


def parse_args():
    parser = argparse.ArgumentParser(description="The Python pool baseline of the e2e bench.")
    parser.add_argument("op", choices=["encrypt", "decrypt"])
    parser.add_argument("src")
    parser.add_argument("out")
    parser.add_argument("key_file")
    parser.add_argument("workers", type=int)
    parser.add_argument("--chunksize", choices=["default", "tuned"], default="default")
    return parser.parse_args()


def main():
    args = parse_args()
    op, src, out, key_file, workers = args.op, args.src, args.out, args.key_file, args.workers
    with open(key_file) as f:
        keys = bytes.fromhex(f.read().strip())
    if len(keys) != 64:
        raise ValueError(f"{key_file}: expected 64 bytes in hex")
    work = {"encrypt": seal, "decrypt": unseal}[op]
    jobs = jobs_for(op, src, out)
    with ProcessPoolExecutor(
        max_workers=workers, initializer=init, initargs=(keys[:32], keys[32:])
    ) as pool:
        if args.chunksize == "default":
            # The call as people write it: the standard library's chunksize of 1, one
            # round trip through the pool per file.
            results = pool.map(work, jobs)
        else:
            # Batches keep the pool's per-task overhead off small files while still giving
            # every worker several batches to balance.
            chunksize = max(1, min(64, len(jobs) // (workers * 4)))
            results = pool.map(work, jobs, chunksize=chunksize)
        total = sum(results)
    print(len(jobs), total)


if __name__ == "__main__":
    main()
