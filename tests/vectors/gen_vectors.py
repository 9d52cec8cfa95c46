#!/usr/bin/env python3
"""Generator for the RCRYPT v1 test-vector kit (tests/vectors/).

NOT RUN BY CI.  The generated files (keyring.toml, kit/*, README.md) are committed;
this script exists so that anyone can audit and regenerate them.  It is an
independent Python implementation of docs/format.md and of the key ring in the README,
sharing no code
with the Rust crate.

Regenerate (byte-identical output; nothing is random):

    pip install cryptography && python3 tests/vectors/gen_vectors.py

If the `openssl` command line tool is on PATH, the openssl-format success vectors
are produced by really running `openssl enc -aes-256-cbc -pbkdf2 -iter N -pass
pass:P -S SALT` and the script asserts its own Python implementation produces the
same bytes (and that `openssl enc -d` decrypts the assembled file).  Without
openssl the Python implementation alone is used (same bytes).

After writing, the script decodes every kit file with its own reference decoder
and asserts the verdict equals the file's `expect:` line.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import struct
import subprocess
import sys

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

HERE = os.path.dirname(os.path.abspath(__file__))
KIT_DIR = os.path.join(HERE, "kit")

# ---------------------------------------------------------------------------
# Primitives
# ---------------------------------------------------------------------------

MAGIC = b"\x89RCRYPT\n"
HEADER_LEN = 96
TAG_LEN = 32
KEY_ID_LABEL = b"ringcrypt key id v1"
HKDF_INFO_PREFIX = b"ringcrypt v1"


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF (RFC 5869) with SHA-256, written out by hand."""
    if not salt:
        salt = b"\x00" * 32
    prk = hmac_sha256(salt, ikm)  # extract
    okm, t, counter = b"", b"", 1
    while len(okm) < length:  # expand
        t = hmac_sha256(prk, t + info + bytes([counter]))
        okm += t
        counter += 1
    return okm[:length]


# RFC 5869 appendix A.1, test case 1.
assert hkdf_sha256(
    bytes.fromhex("0b" * 22),
    bytes.fromhex("000102030405060708090a0b0c"),
    bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"),
    42,
) == bytes.fromhex(
    "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db0"
    "2d56ecc4c5bf34007208d5b887185865"
), "HKDF does not match RFC 5869 test case 1"


def _hkdf_cross_check() -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    ikm, salt, info = b"\x11" * 32, b"\x22" * 32, b"ringcrypt v1" + b"\x33" * 16
    ref = HKDF(algorithm=hashes.SHA256(), length=64, salt=salt, info=info).derive(ikm)
    assert hkdf_sha256(ikm, salt, info, 64) == ref


_hkdf_cross_check()


def aes_ecb_block(key: bytes, block: bytes) -> bytes:
    assert len(block) == 16
    e = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return e.update(block) + e.finalize()


def aes_cbc_encrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    assert len(data) % 16 == 0
    e = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return e.update(data) + e.finalize()


def aes_cbc_decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    assert len(data) % 16 == 0
    d = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    return d.update(data) + d.finalize()


def pkcs7_pad(data: bytes) -> bytes:
    n = 16 - len(data) % 16
    return data + bytes([n]) * n


def pkcs7_unpad(data: bytes) -> bytes | None:
    """Strict PKCS#7 (block 16).  None on invalid padding."""
    if not data or len(data) % 16:
        return None
    n = data[-1]
    if n < 1 or n > 16 or data[-n:] != bytes([n]) * n:
        return None
    return data[:-n]


def u64(i: int) -> bytes:
    return struct.pack(">Q", i)


def pattern(n: int) -> bytes:
    """The kit plaintext `pattern N`: byte i = i % 251."""
    return bytes(i % 251 for i in range(n))


# ---------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------


def test_secret(name: str) -> bytes:
    return hashlib.sha256(b"ringcrypt test key " + name.encode()).digest()


def key_id(master: bytes) -> bytes:
    return hmac_sha256(master, KEY_ID_LABEL)[:16]


# (name, state) of the secret keys in the ring; `stranger` is deliberately absent.
RING_SECRETS = [("alpha", "active"), ("beta", "active"), ("gamma", "decrypt-only"), ("old", "retired")]
RING_PASSPHRASES = [("legacy", "correct horse battery staple", 10000), ("legacy-fast", "hunter2", 1000)]
RING_DEFAULT = "alpha"
ALL_SECRET_NAMES = [n for n, _ in RING_SECRETS] + ["stranger"]
SECRETS = {n: test_secret(n) for n in ALL_SECRET_NAMES}
PASSPHRASES = {n: (p, it) for n, p, it in RING_PASSPHRASES}


def keyring_toml() -> str:
    out = [
        "# Test key ring for tests/vectors/kit (the README's \"Key ring\"). TEST KEYS ONLY, PUBLIC.",
        "# Generated by tests/vectors/gen_vectors.py; secret = SHA-256(\"ringcrypt test key \" + name).",
        "# The key `stranger` (used to make unknown_key vectors) is intentionally NOT listed.",
        "# Git does not keep mode 0600: copy this file to a 0600 temp file before loading it.",
        f'default = "{RING_DEFAULT}"',
    ]
    for name, state in RING_SECRETS:
        out += ["", "[[key]]", f'name = "{name}"', f'secret = "{SECRETS[name].hex()}"', f'state = "{state}"']
    for name, pw, it in RING_PASSPHRASES:
        out += ["", "[[key]]", f'name = "{name}"', f'passphrase = "{pw}"', f"iter = {it}"]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------
# RCRYPT v1 sealer (with knobs for building malformed files)
# ---------------------------------------------------------------------------


def make_salt(label: str) -> bytes:
    return hashlib.sha256(b"ringcrypt test salt " + label.encode()).digest()


class Sealer:
    """Holds the per-file state so tests can hand-craft records."""

    def __init__(self, key_name: str, salt: bytes, chunk_log2: int):
        self.master = SECRETS[key_name]
        self.salt = salt
        self.chunk_log2 = chunk_log2
        self.C = 1 << chunk_log2
        h16 = MAGIC + bytes([1, 1, chunk_log2, 0]) + b"\x00" * 4
        assert len(h16) == 16
        self.prefix64 = h16 + key_id(self.master) + salt
        okm = hkdf_sha256(self.master, salt, HKDF_INFO_PREFIX + h16, 64)
        self.k_enc, self.k_mac = okm[:32], okm[32:]
        self.header_tag = hmac_sha256(self.k_mac, self.prefix64)
        self.header = self.prefix64 + self.header_tag

    def iv(self, i: int) -> bytes:
        return aes_ecb_block(self.k_enc, u64(i) + u64(0))

    def tag(self, i: int, last: int, ct: bytes) -> bytes:
        return hmac_sha256(self.k_mac, self.header_tag + u64(i) + bytes([last]) + ct)

    def enc(self, i: int, padded_pt: bytes) -> bytes:
        return aes_cbc_encrypt(self.k_enc, self.iv(i), padded_pt)

    def record(self, i: int, last: int, ct: bytes, tag_index: int | None = None) -> bytes:
        return ct + self.tag(i if tag_index is None else tag_index, last, ct)

    def chunks(self, pt: bytes) -> list[bytes]:
        n = len(pt) // self.C + 1
        return [pt[k * self.C:(k + 1) * self.C] for k in range(n)]

    def records(self, pt: bytes) -> list[bytes]:
        ch = self.chunks(pt)
        out = []
        for i, c in enumerate(ch):
            last = int(i == len(ch) - 1)
            p = pkcs7_pad(c) if last else c
            out.append(self.record(i, last, self.enc(i, p)))
        return out

    def seal(self, pt: bytes) -> bytes:
        return self.header + b"".join(self.records(pt))


def seal(key_name: str, salt: bytes, chunk_log2: int, pt: bytes) -> bytes:
    return Sealer(key_name, salt, chunk_log2).seal(pt)


# ---------------------------------------------------------------------------
# openssl compatibility format
# ---------------------------------------------------------------------------


def openssl_kdf(passphrase: str, salt: bytes, iters: int) -> tuple[bytes, bytes]:
    dk = hashlib.pbkdf2_hmac("sha256", passphrase.encode(), salt, iters, 48)
    return dk[:32], dk[32:]


def openssl_encrypt_py(passphrase: str, iters: int, salt: bytes, pt: bytes) -> bytes:
    key, iv = openssl_kdf(passphrase, salt, iters)
    return b"Salted__" + salt + aes_cbc_encrypt(key, iv, pkcs7_pad(pt))


def openssl_encrypt_real(passphrase: str, iters: int, salt: bytes, pt: bytes) -> bytes | None:
    exe = shutil.which("openssl")
    if exe is None:
        return None
    cmd = [exe, "enc", "-aes-256-cbc", "-pbkdf2", "-iter", str(iters),
           "-pass", "pass:" + passphrase, "-S", salt.hex()]
    raw = subprocess.run(cmd, input=pt, capture_output=True, check=True).stdout
    # OpenSSL >= 3.0 does not write the `Salted__` header when the salt is given with
    # -S (it does when it picks the salt itself); 1.1.x does write it.  Normalise to
    # the on-disk format `openssl enc` writes with a random salt.
    if not raw.startswith(b"Salted__" + salt):
        raw = b"Salted__" + salt + raw
    # Prove openssl itself reads the assembled file back.
    back = subprocess.run([exe, "enc", "-d", "-aes-256-cbc", "-pbkdf2", "-iter", str(iters),
                           "-pass", "pass:" + passphrase], input=raw, capture_output=True, check=True).stdout
    assert back == pt, "openssl enc -d did not round-trip"
    return raw


# ---------------------------------------------------------------------------
# Reference decoder (the contract)
# ---------------------------------------------------------------------------


class Ring:
    def __init__(self):
        self.by_id = {key_id(SECRETS[n]): (n, st) for n, st in RING_SECRETS}
        self.passphrases = PASSPHRASES


def decode_ringcrypt(body: bytes, ring: Ring) -> tuple[str, bytes | None, str]:
    """Returns (verdict, plaintext or None, reason).  `reason` is for the self-check only."""
    # 1. Structural header checks, before any key is used.
    if len(body) < HEADER_LEN:
        return "bad_format", None, "short header"
    if body[0:8] != MAGIC or body[8] != 1 or body[9] != 1:
        return "bad_format", None, "magic/version/suite"
    chunk_log2 = body[10]
    if not 12 <= chunk_log2 <= 24 or body[11] != 0 or body[12:16] != b"\x00" * 4:
        return "bad_format", None, "chunk_log2/flags/reserved"
    # 2. Key lookup.
    entry = ring.by_id.get(body[16:32])
    if entry is None:
        return "unknown_key", None, "key_id"
    name, state = entry
    if state == "retired":
        return "key_retired", None, "key_id"
    # 3. Header tag.
    master = SECRETS[name]
    okm = hkdf_sha256(master, body[32:64], HKDF_INFO_PREFIX + body[0:16], 64)
    k_enc, k_mac = okm[:32], okm[32:]
    header_tag = body[64:96]
    if not hmac.compare_digest(hmac_sha256(k_mac, body[0:64]), header_tag):
        return "auth_failed", None, "header tag"
    # 4. Records.  A record is non-final iff more than C+32 bytes remain; then it is
    #    exactly C+32 bytes.  Otherwise everything that remains is the final record.
    C = 1 << chunk_log2
    pos, i, out = HEADER_LEN, 0, []
    while True:
        rem = len(body) - pos
        last = 0 if rem > C + TAG_LEN else 1
        rec = body[pos:pos + C + TAG_LEN] if not last else body[pos:]
        if len(rec) < TAG_LEN:
            return "auth_failed", None, "record tag"
        ct, tag = rec[:-TAG_LEN], rec[-TAG_LEN:]
        want = hmac_sha256(k_mac, header_tag + u64(i) + bytes([last]) + ct)
        if not hmac.compare_digest(want, tag):  # tag checked before any decryption
            return "auth_failed", None, "record tag"
        if len(ct) == 0 or len(ct) % 16:
            return "auth_failed", None, "ciphertext length"
        pt = aes_cbc_decrypt(k_enc, aes_ecb_block(k_enc, u64(i) + u64(0)), ct)
        if last:
            pt = pkcs7_unpad(pt)
            if pt is None:
                return "auth_failed", None, "padding"
            out.append(pt)
            return "success", b"".join(out), ""
        out.append(pt)
        pos += len(rec)
        i += 1


def decode_openssl(body: bytes, passphrase: str, iters: int) -> tuple[str, bytes | None, str]:
    if len(body) < 16 or body[:8] != b"Salted__":
        return "bad_format", None, "short or magic"
    ct = body[16:]
    if len(ct) == 0 or len(ct) % 16:
        return "bad_format", None, "ciphertext length"
    key, iv = openssl_kdf(passphrase, body[8:16], iters)
    pt = pkcs7_unpad(aes_cbc_decrypt(key, iv, ct))
    if pt is None:
        return "auth_failed", None, "padding"
    return "success", pt, ""


# ---------------------------------------------------------------------------
# Kit files
# ---------------------------------------------------------------------------

FIELD_ORDER = ["expect", "format", "key", "plaintext", "chunk_log2", "salt", "comment"]
VERDICTS = {"success", "auth_failed", "unknown_key", "key_retired", "bad_format"}

CASES: list[tuple[str, dict, bytes]] = []
# Which check the reference decoder must fail on (self-check only, not written out).
# Makes sure e.g. a "tag valid, padding bad" case really has a valid tag.
WHY: dict[str, str] = {}


def add(name: str, expect: str, fmt: str, key: str, body: bytes, comment: str, why: str | None = None, **extra):
    assert expect in VERDICTS and fmt in ("ringcrypt", "openssl")
    assert "\n" not in comment and all(c.isalnum() or c in "_-" for c in name)
    assert name not in {c[0] for c in CASES}, name
    fields = {"expect": expect, "format": fmt, "key": key}
    fields.update({k: str(v) for k, v in extra.items()})
    fields["comment"] = comment
    assert set(fields) <= set(FIELD_ORDER)
    if why is None and expect == "auth_failed" and fmt == "ringcrypt":
        why = "record tag"
    if why is None and expect == "auth_failed" and fmt == "openssl":
        why = "padding"
    if why is not None:
        WHY[name] = why
    CASES.append((name, fields, body))


def render(fields: dict, body: bytes) -> bytes:
    head = "".join(f"{k}: {fields[k]}\n" for k in FIELD_ORDER if k in fields)
    return head.encode("utf-8") + b"\n" + body


def parse_kit(data: bytes) -> tuple[dict, bytes]:
    fields, pos = {}, 0
    while True:
        nl = data.index(b"\n", pos)
        line = data[pos:nl].decode("utf-8")
        pos = nl + 1
        if line == "":
            return fields, data[pos:]
        k, v = line.split(": ", 1)
        fields[k] = v


def add_ok(name: str, key: str, chunk_log2: int, n: int, salt_label: str | None = None, comment: str = ""):
    salt = make_salt(salt_label or name)
    body = seal(key, salt, chunk_log2, pattern(n))
    add(name, "success", "ringcrypt", key, body, comment or f"{n}-byte pattern under {key}, chunk_log2 {chunk_log2}",
        plaintext=f"pattern {n}", chunk_log2=chunk_log2, salt=salt.hex())


def flip(b: bytes, off: int, mask: int = 0x01) -> bytes:
    a = bytearray(b)
    a[off] ^= mask
    return bytes(a)


def setb(b: bytes, off: int, val: int) -> bytes:
    a = bytearray(b)
    a[off] = val
    return bytes(a)


def build():
    C = 4096  # chunk_log2 12

    # --- success, ringcrypt -------------------------------------------------
    for n, why in [(0, "empty file: one final record of 16 padding bytes"), (1, ""), (15, ""), (16, "final chunk padded with a full block"),
                   (17, ""), (C - 1, "C-1: single final record with exactly C bytes of ciphertext"),
                   (C, "C: one full chunk plus an empty final chunk"), (C + 1, ""), (3 * C + 5, ""),
                   (2 * C + 100, "the base file every auth_* / trunc_* / trailing_* case is derived from"),
                   (8 * C - 1, ""), (8 * C, "8 full chunks (one crypto batch) plus an empty final chunk"),
                   (8 * C + 1, ""), (8 * C + 17, "")]:
        add_ok(f"ok_c12_len{n}", "alpha", 12, n, comment=(why and why + "; ") + f"{n}-byte pattern, alpha, chunk_log2 12")
    add_ok("ok_c16_len0", "alpha", 16, 0, comment="empty file at the default chunk_log2 16")
    add_ok("ok_c16_len100000", "alpha", 16, 100000, comment="100000 bytes at chunk_log2 16: one full 64 KiB chunk + final 34464 bytes")
    add_ok("ok_c13_len17384", "alpha", 13, 2 * 8192 + 1000, comment="chunk_log2 13: two full 8 KiB chunks + final 1000 bytes")
    add_ok("ok_c24_len1000", "alpha", 24, 1000, comment="largest valid chunk_log2 (24): 1000 bytes, single final record")
    add_ok("ok_beta_c12_len5000", "beta", 12, 5000, comment="second active key (beta), not the default")
    add_ok("ok_gamma_c12_len5000", "gamma", 12, 5000, comment="decrypt-only key (gamma) still decrypts")

    # Same key + same salt => identical header and header_tag => records are
    # interchangeable between such files.  The format cannot detect this splice; the
    # result is byte-identical to sealing the spliced plaintext.  See README.
    s2 = make_salt("splice same salt")
    donor = Sealer("alpha", s2, 12)
    other_pt = bytearray(pattern(2 * C + 100))
    for k in range(C, 2 * C):
        other_pt[k] ^= 0x5A
    other = Sealer("alpha", s2, 12).records(bytes(other_pt))
    spliced = donor.header + other[0] + donor.records(pattern(2 * C + 100))[1] + other[2]
    assert spliced == donor.seal(pattern(2 * C + 100))
    add("ok_splice_same_salt_rec1", "success", "ringcrypt", "alpha", spliced,
        "NOT auth_failed: record 1 spliced between two alpha files with the SAME salt; the format cannot detect it (bytes equal seal of pattern)",
        plaintext=f"pattern {2 * C + 100}", chunk_log2=12, salt=s2.hex())

    # --- success, openssl ----------------------------------------------------
    real_used = shutil.which("openssl") is not None
    for key in ["legacy", "legacy-fast"]:
        pw, it = PASSPHRASES[key]
        for n in [0, 1, 16, 1000]:
            salt8 = hashlib.sha256(f"openssl test salt {key} {n}".encode()).digest()[:8]
            py = openssl_encrypt_py(pw, it, salt8, pattern(n))
            real = openssl_encrypt_real(pw, it, salt8, pattern(n))
            if real is not None:
                assert real == py, f"python openssl-format mismatch for {key} {n}"
            add(f"openssl_{key.replace('-', '_')}_len{n}", "success", "openssl", key, py,
                f"`Salted__` + salt + output of openssl enc -aes-256-cbc -pbkdf2 -iter {it} -pass pass:... -S {salt8.hex()} on the {n}-byte pattern (OpenSSL 3 omits the header with -S)",
                plaintext=f"pattern {n}")

    # --- bad_format --------------------------------------------------------
    base_sealer = Sealer("alpha", make_salt("base"), 12)
    base_pt = pattern(2 * C + 100)
    recs = base_sealer.records(base_pt)
    base = base_sealer.header + b"".join(recs)
    assert len(recs) == 3 and len(recs[2]) == 112 + 32
    H = base_sealer.header

    add("bad_empty", "bad_format", "ringcrypt", "alpha", b"", "empty body")
    add("bad_len50", "bad_format", "ringcrypt", "alpha", base[:50], "first 50 bytes of a valid file (shorter than the 96-byte header)")
    add("bad_len95", "bad_format", "ringcrypt", "alpha", base[:95], "first 95 bytes of a valid file (header one byte short)")
    add("bad_magic_first_byte", "bad_format", "ringcrypt", "alpha", setb(base, 0, 0x88), "magic byte 0 is 0x88 instead of 0x89")
    add("bad_magic_last_byte", "bad_format", "ringcrypt", "alpha", setb(base, 7, 0x0D), "magic byte 7 is 0x0D instead of 0x0A")
    for v in (0, 2):
        add(f"bad_version_{v}", "bad_format", "ringcrypt", "alpha", setb(base, 8, v), f"version byte = {v}")
    for v in (0, 2):
        add(f"bad_suite_{v}", "bad_format", "ringcrypt", "alpha", setb(base, 9, v), f"suite byte = {v}")
    for v in (11, 25, 255):
        add(f"bad_chunk_log2_{v}", "bad_format", "ringcrypt", "alpha", setb(base, 10, v), f"chunk_log2 = {v} (outside 12..=24)")
    for v in (0x01, 0x80):
        add(f"bad_flags_{v:02x}", "bad_format", "ringcrypt", "alpha", setb(base, 11, v), f"flags = 0x{v:02x}")
    for k in range(4):
        add(f"bad_reserved_byte{k}", "bad_format", "ringcrypt", "alpha", setb(base, 12 + k, 1), f"reserved byte {k} (offset {12 + k}) = 1")
    stranger = Sealer("stranger", make_salt("stranger"), 12).seal(base_pt)
    add("bad_flags_under_stranger", "bad_format", "ringcrypt", "stranger", setb(stranger, 11, 1),
        "precedence: flags = 1 on a file under an unknown key -> bad_format, not unknown_key")

    # --- unknown_key / key_retired -----------------------------------------
    add("unknown_key_stranger", "unknown_key", "ringcrypt", "stranger", stranger, "well-formed file under `stranger`, a key not in the ring")
    add("unknown_key_id_bitflip", "unknown_key", "ringcrypt", "alpha", flip(base, 16), "alpha file with bit 0 of key_id byte 0 flipped")
    old = Sealer("old", make_salt("old"), 12).seal(base_pt)
    add("key_retired_old", "key_retired", "ringcrypt", "old", old, "well-formed file under the retired key `old`")
    add("key_retired_bad_header_tag", "key_retired", "ringcrypt", "old", flip(old, 64),
        "precedence: retired key with a broken header tag -> key_retired (key checked before tag)")

    # --- auth_failed: header -------------------------------------------------
    A = "auth_failed"

    def auth(name, body, comment, key="alpha", why=None):
        assert body != base
        add(name, A, "ringcrypt", key, body, comment, why=why)

    auth("auth_header_tag_bitflip", flip(base, 64), "header_tag byte 0 bit 0 flipped", why="header tag")
    auth("auth_header_tag_last_bitflip", flip(base, 95, 0x80), "header_tag byte 31 bit 7 flipped", why="header tag")
    auth("auth_salt_bitflip", flip(base, 32), "salt byte 0 bit 0 flipped (covered by header_tag and HKDF)", why="header tag")
    auth("auth_chunk_log2_12_to_13", setb(base, 10, 13), "chunk_log2 changed 12 -> 13 (valid value, breaks header_tag)", why="header tag")
    auth("auth_key_id_swapped_beta", H[:16] + key_id(SECRETS["beta"]) + base[32:],
         "alpha file whose key_id is replaced by beta's id (known key, wrong header tag)", why="header tag")
    other_salt = Sealer("alpha", make_salt("other salt"), 12)
    other_recs = other_salt.records(base_pt)
    auth("auth_header_from_other_file", other_salt.header + b"".join(recs),
         "valid header (good header_tag) of another alpha file with a different salt, records of the base file")

    # --- auth_failed: bit flips in records ---------------------------------
    r0, r1, r2 = 96, 96 + C + 32, 96 + 2 * (C + 32)
    auth("auth_ct_bitflip_rec0_first", flip(base, r0), "ciphertext bit flip: record 0, first byte")
    auth("auth_ct_bitflip_rec0_last", flip(base, r0 + C - 1), "ciphertext bit flip: record 0, last ciphertext byte")
    auth("auth_ct_bitflip_rec1", flip(base, r1 + 1000), "ciphertext bit flip: record 1, byte 1000")
    auth("auth_ct_bitflip_final", flip(base, r2 + 50), "ciphertext bit flip: final record, byte 50")
    auth("auth_ct_bitflip_final_last_block", flip(base, r2 + 111), "ciphertext bit flip: final record, last ciphertext byte")
    auth("auth_tag_bitflip_rec0", flip(base, r0 + C), "tag bit flip: record 0, tag byte 0")
    auth("auth_tag_bitflip_rec1", flip(base, r1 + C + 31), "tag bit flip: record 1, tag byte 31")
    auth("auth_tag_bitflip_final", flip(base, len(base) - 1), "tag bit flip: final record, last byte of file")

    # --- auth_failed: truncation --------------------------------------------
    auth("trunc_header_only", base[:96], "truncated to exactly the 96-byte header, no records")
    auth("trunc_after_record_0", base[:r1], "truncated after record 0 (it is then read as the final record: tag fails)")
    auth("trunc_after_record_1", base[:r2], "truncated after record 1")
    auth("trunc_mid_record_0", base[:r0 + (C + 32) // 2], "truncated in the middle of record 0")
    auth("trunc_mid_final_record", base[:r2 + 72], "truncated in the middle of the final record")
    auth("trunc_final_minus_16", base[:-16], "final record missing its last 16 bytes")
    auth("trunc_final_minus_1", base[:-1], "final record missing its last byte")
    auth("trunc_header_plus_16", base[:112], "header plus 16 bytes (shorter than one tag)")

    # --- auth_failed: structure ---------------------------------------------
    whole = base_sealer.records(pattern(2 * C))  # records 0,1 full (last=0), record 2 empty final
    auth("auth_missing_final_chunk", H + whole[0] + whole[1],
         "plaintext 2C: both full chunks tagged last=0, the empty final record is missing")
    extra_final = base_sealer.record(3, 1, base_sealer.enc(3, pkcs7_pad(b"x" * 20)))
    auth("auth_two_final_chunks", base + extra_final,
         "base file plus a second correctly tagged last=1 record at index 3")
    full_r0_last1 = base_sealer.record(0, 1, base_sealer.enc(0, base_pt[:C]))
    auth("auth_final_at_index0_then_more", H + full_r0_last1 + recs[1] + recs[2],
         "record 0 (full C bytes) tagged last=1, followed by the normal records 1 and 2")
    short_r0_last1 = base_sealer.record(0, 1, base_sealer.enc(0, pkcs7_pad(base_pt[:100])))
    auth("auth_short_final_at_index0_then_more", H + short_r0_last1 + recs[1] + recs[2],
         "a complete short final record at index 0 (100 bytes padded, last=1) followed by records 1 and 2")
    auth("auth_swapped_records_0_1", H + recs[1] + recs[0] + recs[2], "records 0 and 1 swapped")
    auth("auth_splice_rec1_other_salt", H + recs[0] + other_recs[1] + recs[2],
         "record 1 replaced by record 1 of another alpha file with a different salt")
    auth("auth_duplicate_rec0", H + recs[0] + recs[0] + recs[2], "record 0 repeated in place of record 1")
    auth("auth_final_tagged_last0", H + recs[0] + recs[1] + base_sealer.record(2, 0, recs[2][:-32]),
         "final record's ciphertext tagged with last=0")

    # --- auth_failed: trailing data ------------------------------------------
    auth("trailing_garbage_1", base + b"\x00", "one 0x00 byte after the final record")
    auth("trailing_garbage_16", base + bytes(range(16)), "16 bytes after the final record")
    auth("trailing_garbage_32", base + hashlib.sha256(b"garbage").digest(), "32 bytes after the final record")
    extra_nonfinal = base_sealer.record(3, 0, base_sealer.enc(3, pattern(C)))
    auth("trailing_extra_record", base + extra_nonfinal,
         "a whole correctly tagged non-final record (index 3) appended after the final record")

    # --- auth_failed: correctly tagged, but bad content ----------------------
    tail = base_pt[2 * C:]  # 100 bytes

    def final_rec(padded: bytes, i: int = 2) -> bytes:
        return base_sealer.record(i, 1, base_sealer.enc(i, padded))

    pre = H + recs[0] + recs[1]
    auth("auth_bad_padding_byte_00", pre + final_rec(tail + b"\x0c" * 11 + b"\x00"),
         "final record correctly tagged; plaintext ends with pad byte 0x00", why="padding")
    auth("auth_bad_padding_byte_11", pre + final_rec(tail[:95] + b"\x11" * 17),
         "final record correctly tagged; pad byte 0x11 = 17 (> block size)", why="padding")
    auth("auth_bad_padding_inconsistent", pre + final_rec(tail + b"\x0c" * 5 + b"\x0b" + b"\x0c" * 6),
         "final record correctly tagged; pad 0x0c but one of the pad bytes is 0x0b", why="padding")
    auth("auth_bad_padding_byte_20", pre + final_rec(tail[:80] + b"\x20" * 32),
         "final record correctly tagged; last 32 bytes all 0x20 (pad 32 > 16, rejected by strict PKCS#7)", why="padding")
    ct_final = recs[2][:-32]
    auth("auth_final_ct_len_not_multiple_16", pre + base_sealer.record(2, 1, ct_final[:100]),
         "final record correctly tagged but its ciphertext is 100 bytes (not a multiple of 16)", why="ciphertext length")
    auth("auth_final_ct_empty", pre + base_sealer.record(2, 1, b""),
         "final record correctly tagged with an empty ciphertext (record = 32-byte tag only)", why="ciphertext length")
    auth("auth_final_ct_8_bytes", pre + base_sealer.record(2, 1, ct_final[:8]),
         "final record correctly tagged with an 8-byte ciphertext", why="ciphertext length")
    short_nf = base_sealer.record(0, 0, base_sealer.enc(0, base_pt[:C - 16]))
    auth("auth_short_nonfinal_record", H + short_nf + final_rec(pkcs7_pad(base_pt[C - 16:C + 50]), 1),
         "record 0 correctly tagged last=0 but only C-16 bytes of ciphertext, then a correctly tagged final record 1")
    big_final = base_sealer.record(1, 1, base_sealer.enc(1, pkcs7_pad(base_pt[C:2 * C])))
    auth("auth_final_ct_c_plus_16", H + recs[0] + big_final,
         "final record 1 is a padded full chunk: C+16 bytes of ciphertext, tag valid")
    auth("auth_wrong_index_tag", H + base_sealer.record(0, 0, recs[0][:-32], tag_index=5) + recs[1] + recs[2],
         "record 0 ciphertext tagged as index 5 (tag otherwise valid)")
    empty_sealer = Sealer("alpha", make_salt("empty last0"), 12)
    auth("auth_empty_final_tagged_last0", empty_sealer.header + empty_sealer.record(0, 0, empty_sealer.enc(0, pkcs7_pad(b""))),
         "empty-plaintext file whose single record is tagged last=0")

    # --- openssl malformed ---------------------------------------------------
    leg = next(b for n, f, b in CASES if n == "openssl_legacy_len1000")
    fast = next(b for n, f, b in CASES if n == "openssl_legacy_fast_len1000")
    assert len(leg) == 16 + 1008
    add("openssl_bad_empty", "bad_format", "openssl", "legacy", b"", "empty body")
    add("openssl_bad_len10", "bad_format", "openssl", "legacy", leg[:10], "10 bytes: shorter than Salted__ + salt")
    add("openssl_bad_salt_only", "bad_format", "openssl", "legacy", leg[:16], "Salted__ + 8-byte salt, no ciphertext")
    add("openssl_bad_magic", "bad_format", "openssl", "legacy", b"Salted_!" + leg[8:],
        "magic is `Salted_!` instead of `Salted__` (structural: bad_format)")
    add("openssl_bad_ct_len_1007", "bad_format", "openssl", "legacy", leg[:-1], "ciphertext 1007 bytes (not a multiple of 16)")
    add("openssl_bad_ct_len_1009", "bad_format", "openssl", "legacy", leg + b"\x00", "ciphertext 1009 bytes (one trailing byte)")
    add("openssl_bad_ct_len_8", "bad_format", "openssl", "legacy", leg[:24], "ciphertext 8 bytes")
    # With these exact bytes the (deterministic) padding check fails; asserted below.
    add("openssl_auth_trunc_last_block", "auth_failed", "openssl", "legacy", leg[:-16],
        "last 16-byte block removed: new last plaintext byte is data (0xee), invalid padding")
    add("openssl_auth_pad_bitflip", "auth_failed", "openssl", "legacy", flip(leg, len(leg) - 17),
        "bit flip in the next-to-last ciphertext block turns pad 0x08 into 0x09: invalid padding")
    add("openssl_auth_wrong_passphrase", "auth_failed", "openssl", "legacy-fast", leg,
        "legacy (iter 10000) file decrypted with legacy-fast: wrong key; padding checked invalid for these bytes (a wrong key can yield valid padding by chance, ~1/256)")
    add("openssl_auth_wrong_passphrase_rev", "auth_failed", "openssl", "legacy", fast,
        "legacy-fast file decrypted with legacy: wrong key; padding checked invalid for these bytes")

    return real_used


# ---------------------------------------------------------------------------
# README
# ---------------------------------------------------------------------------

README_HEAD = """\
# RCRYPT v1 test-vector kit

Files under `tests/vectors/` are **generated** by `gen_vectors.py`, an independent Python
implementation of docs/format.md and of the key ring in the README. They are committed; CI does
not run the generator. Regenerate (byte-identical, nothing random) with:

```
pip install cryptography && python3 tests/vectors/gen_vectors.py
```

The generator ends by decoding every kit file with its own reference decoder and asserting
the verdict equals the file's `expect:` line (and, for successes, the plaintext and — for
ringcrypt — that re-sealing with key+salt+chunk_log2 reproduces the body byte for byte).
If `openssl` is on PATH, the openssl-format success vectors are produced by the real
`openssl enc` and compared with the Python implementation.

## Kit file format

One case per file, `kit/NAME` (no extension). Like the age testkit: UTF-8 header lines
`field: value` (field name, colon, one space, value to end of line, `\\n` line endings),
then one empty line, then the raw body — the file under test — up to end of file (the body
may be empty; it is never followed by anything). Fields, always in this order:

| field | presence | meaning |
| --- | --- | --- |
| `expect` | always, first line | `success`, `auth_failed`, `unknown_key`, `key_retired` or `bad_format` |
| `format` | always | `ringcrypt` or `openssl` |
| `key` | always | keyring entry name. openssl: the passphrase entry the decryptor must use. ringcrypt: the key the file claims / was made with (informational: ringcrypt files name their key by key_id) |
| `plaintext` | when `expect: success` | `pattern LEN`: byte i = i % 251 for i in 0..LEN |
| `chunk_log2` | ringcrypt successes | decimal chunk_log2 used to seal |
| `salt` | ringcrypt successes | 64 lowercase hex digits, the 32-byte salt used to seal |
| `comment` | always, last line | one line of prose |

For ringcrypt success files a sealer given (`key`, `salt`, `chunk_log2`, plaintext) must
reproduce the body byte for byte.

## Key ring

`keyring.toml` (README "Key ring"). Secrets are SHA-256(`"ringcrypt test key " + name`), hex.
Git does not keep file modes: copy it to a 0600 file before loading it with a loader that
enforces 0600.

| name | kind | state | notes |
| --- | --- | --- | --- |
| `alpha` | secret | active | `default = "alpha"` |
| `beta` | secret | active | |
| `gamma` | secret | decrypt-only | its files decrypt: `success` |
| `old` | secret | retired | its files give `key_retired` |
| `legacy` | passphrase `correct horse battery staple` | iter 10000 | openssl format |
| `legacy-fast` | passphrase `hunter2` | iter 1000 | openssl format |
| `stranger` | secret | **not in the ring** | SHA-256(`"ringcrypt test key stranger"`); makes `unknown_key` files |

Key ids (first 16 bytes of HMAC-SHA256(secret, "ringcrypt key id v1")):

KEY_IDS

## Expectation policy (the contract the Rust decoder follows)

ringcrypt format, checked in this order:

1. `bad_format`: body shorter than 96 bytes, wrong magic, version ≠ 1, suite ≠ 1,
   chunk_log2 outside 12..=24, flags ≠ 0, reserved ≠ 0. These structural checks happen
   before any key is looked up (so a malformed header under an unknown key is `bad_format`).
2. `unknown_key`: key_id not in the ring. `key_retired`: key_id of a `retired` key (checked
   before the header tag, so a retired key with a broken tag is `key_retired`).
3. `auth_failed`: everything else — bad header tag (including a changed salt, key_id of
   another known key, or chunk_log2 changed to another valid value), and any
   tag/ciphertext/structure/padding/truncation/trailing-bytes problem after the header.
   Record framing used by the reference decoder: if more than C+32 bytes remain, the next
   record is non-final and is exactly C+32 bytes; otherwise all remaining bytes are the
   final record (so it ends exactly at EOF). Each tag is verified (constant time) before its
   record is decrypted; then the final ciphertext must be a non-zero multiple of 16 and its
   plaintext must carry strict PKCS#7 padding (last byte n in 1..=16, last n bytes all n).
4. `decrypt-only` keys decrypt normally: `success`.

openssl format: `bad_format` only when the body is shorter than 16 bytes, does not start
with `Salted__`, or its ciphertext (after the 16-byte header) is empty or not a multiple of
16 bytes; any decryption/padding failure (including a wrong passphrase) is `auth_failed`.
The format is unauthenticated: a corrupted file whose padding happens to stay valid
decrypts to wrong bytes, so the kit has no such case; the wrong-passphrase cases were
checked to fail the padding check.

Note on splicing: two files under the same key **and the same salt** have identical headers
and header tags, so their records at the same index are interchangeable and the result is a
valid file (`ok_splice_same_salt_rec1` is `success`, byte-identical to sealing the spliced
plaintext). Cross-file integrity rests on salts being unique (random per file); with
different salts a splice fails (`auth_splice_rec1_other_salt`).

## Cases
"""


def readme(cases) -> str:
    ids = "\n".join(f"- `{n}`: `{key_id(SECRETS[n]).hex()}`" for n in ALL_SECRET_NAMES)
    out = [README_HEAD.replace("KEY_IDS", ids)]
    counts = {}
    for _, f, _ in cases:
        counts[f["expect"]] = counts.get(f["expect"], 0) + 1
    out.append(f"{len(cases)} files: " + ", ".join(f"{v} `{k}`" for k, v in sorted(counts.items())) + ".\n")
    out.append("| file | expect | format | key | body bytes | what |")
    out.append("| --- | --- | --- | --- | --- | --- |")
    for n, f, b in cases:
        what = f["comment"].replace("|", "\\|")
        if "plaintext" in f:
            what += f" ({f['plaintext']})"
        out.append(f"| `{n}` | {f['expect']} | {f['format']} | {f['key']} | {len(b)} | {what} |")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def self_check() -> dict:
    ring = Ring()
    counts = {}
    names = sorted(os.listdir(KIT_DIR))
    assert names == sorted(n for n, _, _ in CASES)
    for name in names:
        with open(os.path.join(KIT_DIR, name), "rb") as fh:
            fields, body = parse_kit(fh.read())
        fmt, key, expect = fields["format"], fields["key"], fields["expect"]
        if fmt == "ringcrypt":
            verdict, pt, why = decode_ringcrypt(body, ring)
        else:
            pw, it = PASSPHRASES[key]
            verdict, pt, why = decode_openssl(body, pw, it)
        assert verdict == expect, f"{name}: decoder says {verdict}, kit says {expect}"
        assert WHY.get(name, why) == why, f"{name}: failed on {why!r}, meant to fail on {WHY[name]!r}"
        if expect == "success":
            kind, n = fields["plaintext"].split(" ")
            assert kind == "pattern" and pt == pattern(int(n)), name
            if fmt == "ringcrypt":
                again = seal(key, bytes.fromhex(fields["salt"]), int(fields["chunk_log2"]), pt)
                assert again == body, f"{name}: re-seal differs"
        else:
            assert "plaintext" not in fields
        counts[expect] = counts.get(expect, 0) + 1
    return counts


def main() -> int:
    real_used = build()
    assert len(CASES) >= 60
    os.makedirs(KIT_DIR, exist_ok=True)
    wanted = {n for n, _, _ in CASES}
    for old in os.listdir(KIT_DIR):  # drop stale cases from earlier runs
        if old not in wanted:
            os.remove(os.path.join(KIT_DIR, old))
    total = 0
    for name, fields, body in CASES:
        data = render(fields, body)
        total += len(data)
        with open(os.path.join(KIT_DIR, name), "wb") as fh:
            fh.write(data)
    assert total < 2 * 1024 * 1024, total
    ring_path = os.path.join(HERE, "keyring.toml")
    with open(ring_path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(keyring_toml())
    os.chmod(ring_path, 0o600)
    with open(os.path.join(HERE, "README.md"), "w", encoding="utf-8", newline="\n") as fh:
        fh.write(readme(CASES))
    counts = self_check()
    summary = ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    src = "real openssl cross-checked" if real_used else "openssl not found: Python-only openssl vectors"
    print(f"gen_vectors: {len(CASES)} kit files ({total} bytes), all verdicts match ({summary}); {src}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
