//! Drives the real `ringcrypt` binary in offline mode (`--keys FILE`) over real files in temp
//! directories: key generation, round trips, tampering, existing and missing files, key ring
//! checks, key states, rewrap, interop with the real `openssl` binary, and usage errors.
//!
//! Each test says in a comment what must stay intact and checks it. Exit codes are README "Using it":
//! 0 success, 1 the job failed (stderr `error: ... [code]`), 2 usage error. The one test that
//! tries every byte position of a file goes through the library (`offline::decrypt`) for
//! speed; the binary gets a sample of the same positions.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use ringcrypt::Code;
use ringcrypt::keys::KeyRing;
use ringcrypt::offline::{self, Format, Job};
use ringcrypt::output::Durability;

const BIN: &str = env!("CARGO_BIN_EXE_ringcrypt");

/// RCRYPT v1 header bytes (docs/format.md).
const HEADER: u64 = 96;
/// HMAC-SHA256 tag bytes after every chunk (docs/format.md).
const TAG: u64 = 32;
/// Magic bytes of an RCRYPT v1 file.
const MAGIC: &[u8; 8] = b"\x89RCRYPT\n";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// What one run of the binary did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    #[track_caller]
    fn ok(self) -> Run {
        assert_eq!(self.code, 0, "expected success: {self:#?}");
        self
    }

    /// Exit 1 with `[code]` on the `error:` line.
    #[track_caller]
    fn failed(self, code: &str) -> Run {
        assert_eq!(self.code, 1, "expected exit 1 [{code}]: {self:#?}");
        assert!(
            self.stderr.contains("error: ") && self.stderr.contains(&format!("[{code}]")),
            "expected `error: ... [{code}]` on stderr: {self:#?}"
        );
        self
    }

    #[track_caller]
    fn usage(self) -> Run {
        assert_eq!(self.code, 2, "expected a usage error (exit 2): {self:#?}");
        self
    }
}

/// Runs `ringcrypt ARGS` with no key ring or socket inherited from the environment.
fn ringcrypt(args: &[&str]) -> Run {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("RINGCRYPT_KEYS")
        .env_remove("RINGCRYPT_SOCKET")
        .output()
        .expect("the ringcrypt binary runs");
    Run {
        code: out
            .status
            .code()
            .expect("ringcrypt exited, not killed by a signal"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `ringcrypt --keys RING ARGS`.
fn with_ring(ring: &Path, args: &[&str]) -> Run {
    let mut all = vec!["--keys", s(ring)];
    all.extend_from_slice(args);
    ringcrypt(&all)
}

/// A path as the `&str` the command line takes (temp paths are UTF-8).
fn s(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temp directory")
}

/// splitmix64: deterministic, fast test data, different for every seed.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// A 64-hex-digit secret, different for every seed.
fn secret(seed: u64) -> String {
    hex(&random_bytes(32, seed ^ 0x5EC2E7))
}

/// The key id (docs/format.md) of a secret given as hex.
fn key_id(secret_hex: &str) -> [u8; 16] {
    let bytes: [u8; 32] = unhex(secret_hex).try_into().expect("32 bytes");
    ringcrypt::format::key_id(&bytes)
}

/// One `[[key]]` entry with a secret.
fn key(name: &str, secret_hex: &str, state: &str) -> String {
    format!("[[key]]\nname = \"{name}\"\nsecret = \"{secret_hex}\"\nstate = \"{state}\"\n\n")
}

/// One `[[key]]` entry with an openssl passphrase.
fn passphrase(name: &str, pass: &str, iter: u32, state: &str) -> String {
    format!(
        "[[key]]\nname = \"{name}\"\npassphrase = \"{pass}\"\niter = {iter}\nstate = \"{state}\"\n\n"
    )
}

/// Writes `text` to `path` with mode 0600 (whatever the umask), replacing what was there.
fn write_ring(path: &Path, text: &str) {
    fs::write(path, text).expect("write key ring");
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

/// Writes `data` to `path` and backdates its mtime, so any later write shows.
fn write_input(path: &Path, data: &[u8]) {
    fs::write(path, data).expect("write input");
    let past = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(past))
        .expect("backdate mtime");
}

/// A file's bytes and mtime, to prove it was left alone.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    bytes: Vec<u8>,
    mtime: SystemTime,
}

fn snapshot(path: &Path) -> Snapshot {
    Snapshot {
        bytes: fs::read(path).expect("read file"),
        mtime: fs::metadata(path)
            .and_then(|m| m.modified())
            .expect("mtime"),
    }
}

/// The names in a directory.
fn listing(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .expect("list directory")
        .map(|entry| {
            entry
                .expect("directory entry")
                .file_name()
                .into_string()
                .expect("UTF-8 name")
        })
        .collect()
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|name| name.to_string()).collect()
}

/// Size of a sealed file (docs/format.md): the header, floor(len / C) full records of C + 32 bytes,
/// and a final record holding len mod C bytes PKCS#7-padded to the next multiple of 16
/// (always at least one byte of padding) plus its tag.
fn sealed_size(len: u64, chunk_log2: u8) -> u64 {
    let c = 1u64 << chunk_log2;
    HEADER + (len / c) * (c + TAG) + ((len % c) / 16 + 1) * 16 + TAG
}

/// Size of an openssl-format file: `Salted__`, 8 bytes of salt, PKCS#7-padded ciphertext.
fn openssl_size(len: u64) -> u64 {
    16 + (len / 16 + 1) * 16
}

/// The effective uid of this process, from /proc (no libc needed).
fn euid() -> u32 {
    let status = fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|line| line.starts_with("Uid:"))
        .expect("a Uid: line");
    line.split_whitespace()
        .nth(2)
        .expect("real, effective, saved, fs uids")
        .parse()
        .expect("a number")
}

/// A temp dir with a 0600 ring `keys.toml` holding one active key `k` (no `default` line).
fn one_key_setup() -> (tempfile::TempDir, PathBuf, String) {
    let dir = tempdir();
    let ring = dir.path().join("keys.toml");
    let k = secret(1);
    write_ring(&ring, &key("k", &k, "active"));
    (dir, ring, k)
}

/// The `openssl` binary, or a failure that says to install it.
fn openssl() -> Command {
    match Command::new("openssl").arg("version").output() {
        Ok(out) if out.status.success() => Command::new("openssl"),
        other => panic!(
            "the `openssl` command is needed for the interop tests and was not found or does \
             not run ({other:?}); install it (e.g. `apt-get install openssl`)"
        ),
    }
}

#[track_caller]
fn run_openssl(args: &[&str]) {
    let out = openssl().args(args).output().expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// 1. keygen
// ---------------------------------------------------------------------------------------------

/// Intact: `keygen` prints one [[key]] entry that is a usable key ring on its own (no
/// `default` line needed for a lone key), with a fresh 64-hex-digit secret every run, the
/// given --name, and no secret on stderr.
#[test]
fn keygen_prints_a_fresh_usable_entry() {
    let dir = tempdir();
    let first = ringcrypt(&["keygen", "--name", "prod-2026"]).ok();
    let second = ringcrypt(&["keygen", "--name", "prod-2026"]).ok();
    let secret_of = |text: &str| -> String {
        let line = text
            .lines()
            .find(|line| line.starts_with("secret = "))
            .unwrap_or_else(|| panic!("no secret line in {text:?}"));
        line.trim_start_matches("secret = ")
            .trim_matches('"')
            .to_string()
    };
    let (a, b) = (secret_of(&first.stdout), secret_of(&second.stdout));
    assert_eq!(a.len(), 64, "{a}");
    assert!(a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
    assert_ne!(a, b, "two keygen runs gave the same secret");
    assert!(first.stdout.starts_with("[[key]]\n"), "{}", first.stdout);
    assert!(
        first
            .stdout
            .lines()
            .any(|line| line == "name = \"prod-2026\""),
        "--name not honoured: {}",
        first.stdout
    );
    assert!(!first.stderr.contains(&a), "secret on stderr");

    // Without --name: key-YYYYMMDD-<6 hex>.
    let unnamed = ringcrypt(&["keygen"]).ok();
    let name_line = unnamed
        .stdout
        .lines()
        .find(|line| line.starts_with("name = "))
        .expect("a name line");
    let name = name_line.trim_start_matches("name = ").trim_matches('"');
    assert!(
        name.len() == "key-20260101-abcdef".len()
            && name.starts_with("key-20")
            && name.as_bytes()[12] == b'-',
        "default name {name:?}"
    );

    // `ringcrypt keygen > keys.toml && chmod 600 keys.toml` is a working ring: no default line.
    let ring = dir.path().join("keys.toml");
    write_ring(&ring, &first.stdout);
    assert!(!first.stdout.contains("default"), "{}", first.stdout);
    let parsed = KeyRing::load(&ring).expect("keygen output loads as a key ring");
    let entry = parsed.by_name("prod-2026").expect("the named key");
    assert_eq!(entry.id_hex(), Some(hex(&key_id(&a))));
    let plain = dir.path().join("p");
    write_input(&plain, b"keygen round trip");
    let enc = with_ring(&ring, &["encrypt", s(&plain)]).ok();
    assert!(enc.stdout.contains("prod-2026"), "{enc:#?}");
    assert!(!enc.stdout.contains(&a) && !enc.stderr.contains(&a));
    let sealed = fs::read(dir.path().join("p.rcrypt")).unwrap();
    assert_eq!(&sealed[16..32], &key_id(&a), "sealed under the keygen key");
    let back = dir.path().join("back");
    with_ring(
        &ring,
        &["decrypt", s(&dir.path().join("p.rcrypt")), "-o", s(&back)],
    )
    .ok();
    assert_eq!(fs::read(&back).unwrap(), b"keygen round trip");

    // `keygen >> keys.toml` twice: with two active keys and no default, encrypt needs --key
    // (exit 1, nothing written) until a default is named.
    let two = dir.path().join("two.toml");
    write_ring(&two, &format!("{}\n{}", first.stdout, unnamed.stdout));
    let out = dir.path().join("q.rcrypt");
    let refused = with_ring(&two, &["encrypt", s(&plain), "-o", s(&out)]).failed("bad_request");
    assert!(refused.stderr.contains("default"), "{refused:#?}");
    assert!(!out.exists());
    with_ring(&two, &["encrypt", s(&plain), "-o", s(&out), "--key", name]).ok();
    assert_eq!(
        &fs::read(&out).unwrap()[16..32],
        &key_id(&secret_of(&unnamed.stdout))
    );
    write_ring(
        &two,
        &format!(
            "default = \"prod-2026\"\n{}\n{}",
            first.stdout, unnamed.stdout
        ),
    );
    let out2 = dir.path().join("r.rcrypt");
    with_ring(&two, &["encrypt", s(&plain), "-o", s(&out2)]).ok();
    assert_eq!(&fs::read(&out2).unwrap()[16..32], &key_id(&a));
}

// ---------------------------------------------------------------------------------------------
// 2. Round trips
// ---------------------------------------------------------------------------------------------

/// Intact: encrypt then decrypt gives back every byte, at the chunk boundaries and for a
/// multi-MiB file; the default output name is IN.rcrypt; the sealed size is exactly
/// 96 + records (docs/format.md) with a well-formed header naming the key; inputs are never
/// modified (same bytes, same mtime) by either step.
#[test]
fn round_trips_are_bit_exact_and_leave_inputs_alone() {
    let (dir, ring, k) = one_key_setup();
    let sizes: [usize; 6] = [0, 1, 65_535, 65_536, 65_537, 5 << 20];
    for (i, &len) in sizes.iter().enumerate() {
        let plain = dir.path().join(format!("plain-{len}"));
        let data = random_bytes(len, 100 + i as u64);
        write_input(&plain, &data);
        let before = snapshot(&plain);

        let enc = with_ring(&ring, &["encrypt", s(&plain)]).ok();
        let sealed = dir.path().join(format!("plain-{len}.rcrypt"));
        assert!(sealed.is_file(), "default output name IN.rcrypt: {enc:#?}");
        assert_eq!(
            snapshot(&plain),
            before,
            "encrypt modified its input ({len} bytes)"
        );
        let sealed_bytes = fs::read(&sealed).unwrap();
        assert_eq!(
            sealed_bytes.len() as u64,
            sealed_size(len as u64, 16),
            "sealed size for {len} bytes"
        );
        assert_eq!(&sealed_bytes[..8], MAGIC);
        assert_eq!(
            &sealed_bytes[8..16],
            &[1, 1, 16, 0, 0, 0, 0, 0],
            "version, suite, chunk_log2, flags, reserved"
        );
        assert_eq!(&sealed_bytes[16..32], &key_id(&k));
        // No 32-byte run of plaintext shows through (shorter runs could match by chance).
        if len >= 32 {
            assert!(
                !sealed_bytes.windows(32).any(|w| w == &data[..32]),
                "plaintext visible in the sealed file ({len} bytes)"
            );
        }

        let sealed_before = snapshot(&sealed);
        let back = dir.path().join(format!("back-{len}"));
        with_ring(&ring, &["decrypt", s(&sealed), "-o", s(&back)]).ok();
        assert!(
            fs::read(&back).unwrap() == data,
            "round trip of {len} bytes differs"
        );
        assert_eq!(
            snapshot(&sealed),
            sealed_before,
            "decrypt modified its input ({len} bytes)"
        );
        assert_eq!(snapshot(&plain), before);
    }
    // Same file, encrypted twice: fresh salt, different bytes, same plaintext.
    let plain = dir.path().join("plain-1");
    let again = dir.path().join("again.rcrypt");
    with_ring(&ring, &["encrypt", s(&plain), "-o", s(&again)]).ok();
    assert_ne!(
        fs::read(&again).unwrap(),
        fs::read(dir.path().join("plain-1.rcrypt")).unwrap(),
        "two encryptions of one file must differ (random salt)"
    );
    // Default decrypt name: strip .rcrypt.
    let sub = dir.path().join("sub");
    fs::create_dir(&sub).unwrap();
    fs::copy(&again, sub.join("data.bin.rcrypt")).unwrap();
    with_ring(&ring, &["decrypt", s(&sub.join("data.bin.rcrypt"))]).ok();
    assert_eq!(listing(&sub), names(&["data.bin", "data.bin.rcrypt"]));
    assert_eq!(
        fs::read(sub.join("data.bin")).unwrap(),
        random_bytes(1, 101)
    );
    // Only the outputs named above exist: no temp debris.
    assert!(
        listing(dir.path())
            .iter()
            .all(|name| !name.starts_with('.')),
        "{:?}",
        listing(dir.path())
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Tampering
// ---------------------------------------------------------------------------------------------

/// The error a single-byte change (xor 0x01) at `pos` of a valid sealed file must give:
/// header fields are checked structurally first (`bad_format`), except that a chunk_log2
/// changed to another allowed value parses and then fails the header tag (`auth_failed`); a
/// changed key id names no key in the ring (`unknown_key`); everything after is covered by
/// the header tag or a chunk tag (`auth_failed`).
fn expected_code(pos: usize, original: &[u8]) -> Code {
    match pos {
        10 if (12..=24).contains(&(original[10] ^ 1)) => Code::AuthFailed,
        0..16 => Code::BadFormat,
        16..32 => Code::UnknownKey,
        _ => Code::AuthFailed,
    }
}

/// A sealed 3-chunk file (chunk_log2 12, 2 * 4096 + 100 bytes of plaintext), via the binary.
fn three_chunk_file() -> (tempfile::TempDir, PathBuf, Vec<u8>, Vec<u8>) {
    let (dir, ring, _) = one_key_setup();
    let data = random_bytes(2 * 4096 + 100, 7);
    let plain = dir.path().join("plain");
    write_input(&plain, &data);
    let sealed = dir.path().join("sealed.rcrypt");
    with_ring(
        &ring,
        &["encrypt", s(&plain), "-o", s(&sealed), "--chunk-log2", "12"],
    )
    .ok();
    let bytes = fs::read(&sealed).unwrap();
    assert_eq!(bytes.len() as u64, sealed_size(data.len() as u64, 12));
    assert_eq!(bytes[10], 12);
    (dir, ring, data, bytes)
}

/// Intact: every single-byte change anywhere in a sealed file is refused with the right code
/// (see `expected_code`) and leaves the output directory empty: no plaintext under the output
/// name, no temp file. Through the library for speed; all positions.
#[test]
fn every_single_byte_change_is_refused_by_the_library() {
    let (_dir, ring_path, data, sealed) = three_chunk_file();
    let ring = KeyRing::load(&ring_path).expect("ring loads");
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|worker| {
                let (ring, sealed, data) = (&ring, &sealed, &data);
                scope.spawn(move || {
                    let work = tempdir();
                    let input = work.path().join("t.rcrypt");
                    fs::write(&input, sealed).unwrap();
                    let out_dir = work.path().join("out");
                    fs::create_dir(&out_dir).unwrap();
                    let output = out_dir.join("plain");
                    let job = Job {
                        input: &input,
                        output: &output,
                        key: None,
                        format: Format::Ringcrypt,
                        chunk_log2: 16,
                        overwrite: false,
                        durability: Durability::None,
                    };
                    // The untouched file decrypts, so every failure below is the change's doing.
                    if worker == 0 {
                        offline::decrypt(ring, &job).expect("the untouched file decrypts");
                        assert!(fs::read(&output).unwrap() == *data);
                        fs::remove_file(&output).unwrap();
                    }
                    let file = fs::File::options().write(true).open(&input).unwrap();
                    let mut failures = Vec::new();
                    for pos in (worker..sealed.len()).step_by(workers) {
                        file.write_all_at(&[sealed[pos] ^ 0x01], pos as u64)
                            .unwrap();
                        let want = expected_code(pos, sealed);
                        match offline::decrypt(ring, &job) {
                            Ok(outcome) => {
                                failures.push(format!("byte {pos}: accepted {outcome:?}"))
                            }
                            Err(err) if err.code != want => failures.push(format!(
                                "byte {pos}: {} instead of {want}: {}",
                                err.code, err.message
                            )),
                            Err(_) => {}
                        }
                        let left = listing(&out_dir);
                        if !left.is_empty() {
                            failures.push(format!("byte {pos}: output directory holds {left:?}"));
                            for name in left {
                                let _ = fs::remove_file(out_dir.join(name));
                            }
                        }
                        file.write_all_at(&[sealed[pos]], pos as u64).unwrap();
                    }
                    failures
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().expect("worker panicked"))
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {} positions misbehaved, first ones:\n{}",
        failures.len(),
        sealed.len(),
        failures[..failures.len().min(20)].join("\n")
    );
}

/// Intact: the binary refuses a changed file with exit 1 and the right `[code]`, and leaves
/// the directory exactly as it was: nothing under the output name (default name or -o), no
/// temp file. A sample of ~60 positions spread over header, every chunk and every tag.
#[test]
fn tampered_files_are_refused_by_the_binary_and_leave_nothing() {
    let (dir, ring, _data, sealed) = three_chunk_file();
    let len = sealed.len();
    let record = 4096 + 32;
    let mut positions: BTreeSet<usize> = [
        0,
        7,
        8,
        9,
        10,
        11,
        12,
        15,
        16,
        31,
        32,
        63,
        64,
        95,
        96,
        96 + 4095,
        96 + 4096,
        96 + record - 1,
        96 + record,
        96 + 2 * record - 1,
        96 + 2 * record,
        len - 33,
        len - 32,
        len - 1,
    ]
    .into_iter()
    .collect();
    let mut step = 0;
    while positions.len() < 60 {
        positions.insert((step * 137 + 5) % len);
        step += 1;
    }

    let work = dir.path().join("work");
    let out_dir = dir.path().join("out");
    fs::create_dir(&work).unwrap();
    fs::create_dir(&out_dir).unwrap();
    let input = work.join("t.rcrypt");
    for (n, &pos) in positions.iter().enumerate() {
        let mut changed = sealed.clone();
        changed[pos] ^= 0x01;
        fs::write(&input, &changed).unwrap();
        let want = expected_code(pos, &sealed).as_str();
        // Alternate between the default output name (work/t) and -o into another directory.
        let run = if n % 2 == 0 {
            with_ring(&ring, &["decrypt", s(&input)])
        } else {
            with_ring(
                &ring,
                &["decrypt", s(&input), "-o", s(&out_dir.join("plain"))],
            )
        };
        assert_eq!(run.code, 1, "byte {pos}: {run:#?}");
        assert!(
            run.stderr.contains(&format!("[{want}]")),
            "byte {pos}: want {want}: {run:#?}"
        );
        assert_eq!(listing(&work), names(&["t.rcrypt"]), "byte {pos}");
        assert!(
            listing(&out_dir).is_empty(),
            "byte {pos}: {:?}",
            listing(&out_dir)
        );
        assert!(
            fs::read(&input).unwrap() == changed,
            "byte {pos}: input modified"
        );
    }

    // Truncated and extended files are refused the same way.
    for changed in [
        sealed[..len - 1].to_vec(),
        sealed[..len - 48].to_vec(),
        sealed[..96 + 4096 + 32].to_vec(),
        [&sealed[..], &[0u8; 16]].concat(),
        sealed[..96].to_vec(),
    ] {
        fs::write(&input, &changed).unwrap();
        with_ring(&ring, &["decrypt", s(&input)]).failed("auth_failed");
        assert_eq!(
            listing(&work),
            names(&["t.rcrypt"]),
            "length {}",
            changed.len()
        );
    }
    // Shorter than a header, or empty: not a ringcrypt file at all.
    for changed in [&sealed[..95], &sealed[..4], &sealed[..0]] {
        fs::write(&input, changed).unwrap();
        with_ring(&ring, &["decrypt", s(&input)]).failed("bad_format");
        assert_eq!(listing(&work), names(&["t.rcrypt"]));
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Existing outputs and the input as output
// ---------------------------------------------------------------------------------------------

/// Intact: an existing output is never replaced without --force (exit 1 `[exists]`, same
/// bytes); with --force it is replaced by a complete output, leaving no temp file.
#[test]
fn existing_outputs_are_kept_unless_forced() {
    let (dir, ring, _) = one_key_setup();
    let plain = dir.path().join("plain");
    write_input(&plain, b"fresh data");
    let out = dir.path().join("out.rcrypt");
    write_input(&out, b"precious old bytes");
    let before = snapshot(&out);

    with_ring(&ring, &["encrypt", s(&plain), "-o", s(&out)]).failed("exists");
    assert_eq!(snapshot(&out), before);
    // The default name too.
    let default_out = dir.path().join("plain.rcrypt");
    write_input(&default_out, b"also precious");
    let default_before = snapshot(&default_out);
    with_ring(&ring, &["encrypt", s(&plain)]).failed("exists");
    assert_eq!(snapshot(&default_out), default_before);

    with_ring(&ring, &["encrypt", s(&plain), "-o", s(&out), "--force"]).ok();
    assert_eq!(fs::read(&out).unwrap().len() as u64, sealed_size(10, 16));

    // decrypt onto an existing file: same rules.
    let target = dir.path().join("target");
    write_input(&target, b"keep me");
    let target_before = snapshot(&target);
    with_ring(&ring, &["decrypt", s(&out), "-o", s(&target)]).failed("exists");
    assert_eq!(snapshot(&target), target_before);
    with_ring(&ring, &["decrypt", s(&out), "-o", s(&target), "-f"]).ok();
    assert_eq!(fs::read(&target).unwrap(), b"fresh data");

    assert_eq!(
        listing(dir.path()),
        names(&["keys.toml", "out.rcrypt", "plain", "plain.rcrypt", "target"])
    );
}

/// Intact: decrypt never guesses an output name for a file without the .rcrypt suffix
/// (usage error, exit 2, nothing written).
#[test]
fn decrypt_refuses_to_guess_an_output_name() {
    let (dir, ring, _) = one_key_setup();
    let plain = dir.path().join("plain");
    write_input(&plain, b"x");
    let sealed = dir.path().join("sealed.bin");
    with_ring(&ring, &["encrypt", s(&plain), "-o", s(&sealed)]).ok();
    let before = listing(dir.path());
    let run = with_ring(&ring, &["decrypt", s(&sealed)]).usage();
    assert!(run.stderr.contains("-o"), "{run:#?}");
    // A file called just `.rcrypt` has no name to strip to.
    let bare = dir.path().join(".rcrypt");
    fs::copy(&sealed, &bare).unwrap();
    with_ring(&ring, &["decrypt", s(&bare)]).usage();
    fs::remove_file(&bare).unwrap();
    assert_eq!(listing(dir.path()), before);
}

/// Intact: inputs are never modified, even when the output names the input itself
/// (directly, by another spelling, or through a symlink), with or without --force.
#[test]
fn the_input_is_never_its_own_output() {
    let (dir, ring, _) = one_key_setup();
    let plain = dir.path().join("plain");
    write_input(&plain, b"do not touch");
    let sealed = dir.path().join("sealed.rcrypt");
    with_ring(&ring, &["encrypt", s(&plain), "-o", s(&sealed)]).ok();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&plain, &link).unwrap();
    let sealed_link = dir.path().join("sealed-link");
    std::os::unix::fs::symlink(&sealed, &sealed_link).unwrap();
    let plain_before = snapshot(&plain);
    let sealed_before = snapshot(&sealed);
    let listing_before = listing(dir.path());
    let other_spelling = dir.path().join(".").join("plain");

    let refused = |run: Run| {
        assert!(run.code == 1 || run.code == 2, "must be refused: {run:#?}");
        assert!(run.stderr.contains("error: "), "{run:#?}");
    };
    for force in [false, true] {
        let extra: &[&str] = if force { &["--force"] } else { &[] };
        for out in [&plain, &other_spelling, &link] {
            let mut args = vec!["encrypt", s(&plain), "-o", s(out)];
            args.extend_from_slice(extra);
            refused(with_ring(&ring, &args));
        }
        for out in [&sealed, &sealed_link] {
            let mut args = vec!["decrypt", s(&sealed), "-o", s(out)];
            args.extend_from_slice(extra);
            refused(with_ring(&ring, &args));
            let mut args = vec!["rewrap", s(&sealed), "-o", s(out)];
            args.extend_from_slice(extra);
            refused(with_ring(&ring, &args));
        }
    }
    assert_eq!(snapshot(&plain), plain_before);
    assert_eq!(snapshot(&sealed), sealed_before);
    assert_eq!(listing(dir.path()), listing_before);
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Missing and unusable inputs and output directories
// ---------------------------------------------------------------------------------------------

/// Intact: a missing input is `[not_found]` and names the file; a directory as input is
/// refused; a missing output directory is `[not_found]` and is not created. Nothing written.
#[test]
fn missing_inputs_and_output_directories_are_reported() {
    let (dir, ring, _) = one_key_setup();
    let missing = dir.path().join("no-such-file");
    let run = with_ring(&ring, &["encrypt", s(&missing)]).failed("not_found");
    assert!(run.stderr.contains(s(&missing)), "{run:#?}");
    with_ring(&ring, &["decrypt", s(&dir.path().join("nope.rcrypt"))]).failed("not_found");
    with_ring(
        &ring,
        &[
            "rewrap",
            s(&dir.path().join("nope.rcrypt")),
            "-o",
            s(&dir.path().join("x")),
        ],
    )
    .failed("not_found");

    let subdir = dir.path().join("adir");
    fs::create_dir(&subdir).unwrap();
    let run = with_ring(&ring, &["encrypt", s(&subdir)]);
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(run.stderr.contains("directory"), "{run:#?}");
    let sdir = dir.path().join("sdir.rcrypt");
    fs::create_dir(&sdir).unwrap();
    assert_eq!(with_ring(&ring, &["decrypt", s(&sdir)]).code, 1);

    let plain = dir.path().join("plain");
    write_input(&plain, b"data");
    let gone = dir.path().join("gone");
    let run = with_ring(
        &ring,
        &[
            "encrypt",
            s(&plain),
            "-o",
            s(&gone.join("deeper/out.rcrypt")),
        ],
    )
    .failed("not_found");
    assert!(run.stderr.contains("gone"), "{run:#?}");
    with_ring(
        &ring,
        &["encrypt", s(&plain), "-o", s(&gone.join("out.rcrypt"))],
    )
    .failed("not_found");
    assert!(!gone.exists(), "a missing output directory was created");
    assert_eq!(
        listing(dir.path()),
        names(&["adir", "keys.toml", "plain", "sdir.rcrypt"])
    );
    assert!(listing(&subdir).is_empty() && listing(&sdir).is_empty());
}

/// Intact: an input this user cannot read fails with exit 1 `[permission_denied]` and writes
/// nothing. Root reads everything, so the check is skipped there.
#[test]
fn an_unreadable_input_is_refused() {
    if euid() == 0 {
        println!("skipped: running as root, which can read a mode-000 file");
        return;
    }
    let (dir, ring, _) = one_key_setup();
    let plain = dir.path().join("plain");
    write_input(&plain, b"secret stuff");
    fs::set_permissions(&plain, fs::Permissions::from_mode(0o000)).unwrap();
    let run = with_ring(&ring, &["encrypt", s(&plain)]).failed("permission_denied");
    assert!(run.stderr.contains(s(&plain)), "{run:#?}");
    fs::set_permissions(&plain, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(listing(dir.path()), names(&["keys.toml", "plain"]));
}

// ---------------------------------------------------------------------------------------------
// 6. Key ring checks
// ---------------------------------------------------------------------------------------------

/// Intact: like ssh, a key ring that group or others can access, or that is a symlink, is
/// refused (exit 1) with a message naming the file and saying what to do; mode 0600 works.
#[test]
fn key_ring_permissions_and_symlinks_are_checked() {
    let (dir, ring, k) = one_key_setup();
    let plain = dir.path().join("plain");
    write_input(&plain, b"data");
    let out = dir.path().join("out.rcrypt");
    with_ring(&ring, &["encrypt", s(&plain), "-o", s(&out)]).ok();
    fs::remove_file(&out).unwrap();

    for mode in [0o640, 0o644, 0o604, 0o666, 0o660, 0o620, 0o602] {
        fs::set_permissions(&ring, fs::Permissions::from_mode(mode)).unwrap();
        let run = with_ring(&ring, &["encrypt", s(&plain), "-o", s(&out)]);
        assert_eq!(run.code, 1, "mode {mode:o} accepted: {run:#?}");
        assert!(
            run.stderr.contains(s(&ring)) && run.stderr.contains("chmod 600"),
            "mode {mode:o}: message must name the file and `chmod 600`: {run:#?}"
        );
        assert!(!run.stderr.contains(&k[..16]));
        assert!(!out.exists());
    }
    fs::set_permissions(&ring, fs::Permissions::from_mode(0o600)).unwrap();

    let link = dir.path().join("link.toml");
    std::os::unix::fs::symlink(&ring, &link).unwrap();
    let run = with_ring(&link, &["encrypt", s(&plain), "-o", s(&out)]);
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(
        run.stderr.contains("symbolic link") && run.stderr.contains(s(&link)),
        "{run:#?}"
    );
    assert!(!out.exists());

    let missing = dir.path().join("missing.toml");
    let run = with_ring(&missing, &["encrypt", s(&plain), "-o", s(&out)]).failed("not_found");
    assert!(run.stderr.contains(s(&missing)), "{run:#?}");

    // A ring owned by someone else is refused too (only root can make one to test with).
    if euid() == 0 {
        let foreign = dir.path().join("foreign.toml");
        write_ring(&foreign, &key("k", &k, "active"));
        std::os::unix::fs::chown(&foreign, Some(65_534), Some(65_534)).unwrap();
        let run = with_ring(&foreign, &["encrypt", s(&plain), "-o", s(&out)]);
        assert_eq!(run.code, 1, "{run:#?}");
        assert!(
            run.stderr.contains("owned by") && run.stderr.contains(s(&foreign)),
            "{run:#?}"
        );
    } else {
        println!("ownership check skipped: only root can give a file to another user");
    }
    assert!(!out.exists());
}

/// Intact: a malformed key ring is refused (exit 1) with a message naming the file and the
/// problem, and the message never contains key material, even when the bad line holds it.
#[test]
fn malformed_key_rings_are_refused_without_echoing_secrets() {
    let (dir, _, _) = one_key_setup();
    let plain = dir.path().join("plain");
    write_input(&plain, b"data");
    let out = dir.path().join("out.rcrypt");
    let ring = dir.path().join("bad.toml");
    let good = secret(42);
    let other = secret(43);
    let non_hex = format!("{}g{}", &good[..31], &good[32..]);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unquoted secret",
            format!("[[key]]\nname = \"a\"\nsecret = {good}\n"),
            "line 3",
        ),
        (
            "unterminated string",
            format!("[[key]]\nname = \"a\"\nsecret = \"{good}\n"),
            "line 3",
        ),
        (
            "trailing garbage",
            format!("[[key]]\nname = \"a\"\nsecret = \"{good}\" x\n"),
            "line 3",
        ),
        (
            "broken table header",
            format!("[[key]\nname = \"a\"\nsecret = \"{good}\"\n"),
            "line 1",
        ),
        (
            "hex literal",
            format!("[[key]]\nname = \"a\"\nsecret = 0x{good}\n"),
            "line 3",
        ),
        (
            "secret as array",
            format!("[[key]]\nname = \"a\"\nsecret = [\"{good}\"]\n"),
            "line 3",
        ),
        (
            "duplicate names",
            format!(
                "{}{}",
                key("a", &good, "active"),
                key("a", &other, "active")
            ),
            "twice",
        ),
        (
            "62 hex digits",
            key("a", &good[..62], "active"),
            "64 hex digits",
        ),
        (
            "66 hex digits",
            key("a", &format!("{good}ab"), "active"),
            "64 hex digits",
        ),
        (
            "non-hex digit",
            key("a", &non_hex, "active"),
            "64 hex digits",
        ),
        (
            "same secret twice",
            format!("{}{}", key("a", &good, "active"), key("b", &good, "active")),
            "same secret",
        ),
        (
            "unknown state",
            format!("[[key]]\nname = \"a\"\nsecret = \"{good}\"\nstate = \"sleepy\"\n"),
            "state",
        ),
    ];
    for (what, text, needle) in &cases {
        write_ring(&ring, text);
        let run = with_ring(&ring, &["encrypt", s(&plain), "-o", s(&out)]);
        assert_eq!(run.code, 1, "{what}: {run:#?}");
        assert!(
            run.stderr.contains(s(&ring)) && run.stderr.contains(needle),
            "{what}: the message must name the file and say {needle:?}: {run:#?}"
        );
        for material in [&good[..16], &good[48..], &other[..16], &non_hex[..16]] {
            assert!(
                !run.stderr.contains(material) && !run.stdout.contains(material),
                "{what}: key material echoed: {run:#?}"
            );
        }
        assert!(!out.exists(), "{what}");
    }
}

/// Intact: key material never appears in a message. A passphrase of digits written without
/// quotes is a TOML integer, and the type error must not quote it back.
#[test]
fn key_ring_type_errors_do_not_echo_a_passphrase() {
    let (dir, _, _) = one_key_setup();
    let plain = dir.path().join("plain");
    write_input(&plain, b"data");
    let ring = dir.path().join("bad.toml");
    write_ring(
        &ring,
        "[[key]]\nname = \"legacy\"\npassphrase = 73915562048\n",
    );
    let run = with_ring(&ring, &["encrypt", s(&plain), "--format", "openssl"]);
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(run.stderr.contains(s(&ring)), "{run:#?}");
    assert!(
        !run.stderr.contains("73915562048"),
        "the passphrase is echoed in the error message: {}",
        run.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Key states
// ---------------------------------------------------------------------------------------------

/// Intact: only active keys encrypt (`decrypt-only` and `retired` give `[key_retired]`);
/// files under a `decrypt-only` key still decrypt; a `retired` key refuses them
/// (`[key_retired]`); a key removed from the ring gives `[unknown_key]`. Nothing is written
/// in any failing case.
#[test]
fn key_states_govern_what_a_key_may_do() {
    let (dir, ring, k) = one_key_setup();
    let other = secret(2);
    let plain = dir.path().join("plain");
    let data = random_bytes(70_000, 3);
    write_input(&plain, &data);
    let sealed = dir.path().join("sealed.rcrypt");
    with_ring(
        &ring,
        &["encrypt", s(&plain), "-o", s(&sealed), "--key", "k"],
    )
    .ok();
    let out = dir.path().join("out");
    let new = dir.path().join("new.rcrypt");
    let start = listing(dir.path());

    for state in ["decrypt-only", "retired"] {
        write_ring(
            &ring,
            &format!(
                "default = \"fresh\"\n{}{}",
                key("k", &k, state),
                key("fresh", &other, "active")
            ),
        );
        let run = with_ring(&ring, &["encrypt", s(&plain), "-o", s(&new), "--key", "k"])
            .failed("key_retired");
        assert!(run.stderr.contains(state), "{state}: {run:#?}");
        assert_eq!(listing(dir.path()), start, "{state}");
        // The default key still encrypts.
        with_ring(&ring, &["encrypt", s(&plain), "-o", s(&new)]).ok();
        assert_eq!(&fs::read(&new).unwrap()[16..32], &key_id(&other));
        fs::remove_file(&new).unwrap();
    }

    // decrypt-only: old files still open.
    write_ring(&ring, &key("k", &k, "decrypt-only"));
    with_ring(&ring, &["decrypt", s(&sealed), "-o", s(&out)]).ok();
    assert!(fs::read(&out).unwrap() == data);
    fs::remove_file(&out).unwrap();

    // retired: refused, nothing written.
    write_ring(&ring, &key("k", &k, "retired"));
    let run = with_ring(&ring, &["decrypt", s(&sealed), "-o", s(&out)]).failed("key_retired");
    assert!(run.stderr.contains("\"k\""), "{run:#?}");
    assert_eq!(listing(dir.path()), start);
    // rewrap cannot rescue a file under a retired key either (the default key is active).
    write_ring(
        &ring,
        &format!(
            "{}{}",
            key("k", &k, "retired"),
            key("fresh", &other, "active")
        ),
    );
    with_ring(&ring, &["rewrap", s(&sealed), "-o", s(&new)]).failed("key_retired");
    assert_eq!(listing(dir.path()), start);

    // removed: unknown key, nothing written.
    write_ring(&ring, &key("fresh", &other, "active"));
    with_ring(&ring, &["decrypt", s(&sealed), "-o", s(&out)]).failed("unknown_key");
    with_ring(&ring, &["rewrap", s(&sealed), "-o", s(&new)]).failed("unknown_key");
    assert_eq!(listing(dir.path()), start);

    // An unknown key name is unknown_key too.
    with_ring(
        &ring,
        &["encrypt", s(&plain), "-o", s(&new), "--key", "nobody"],
    )
    .failed("unknown_key");
    assert_eq!(listing(dir.path()), start);

    // The default must be an active key: a ring whose default is decrypt-only is refused.
    write_ring(
        &ring,
        &format!("default = \"k\"\n{}", key("k", &k, "decrypt-only")),
    );
    assert_eq!(
        with_ring(&ring, &["decrypt", s(&sealed), "-o", s(&out)]).code,
        1
    );
    assert_eq!(listing(dir.path()), start);
}

/// Intact: key states apply to passphrase entries too. A `decrypt-only` passphrase still
/// opens old openssl-format files but must not encrypt new ones (`[key_retired]`, nothing
/// written), exactly like a `decrypt-only` secret; a `retired` one does neither.
#[test]
fn a_decrypt_only_passphrase_cannot_encrypt() {
    let (dir, ring, _) = one_key_setup();
    let plain = dir.path().join("plain");
    write_input(&plain, b"legacy archive");
    let legacy = dir.path().join("legacy.enc");
    write_ring(&ring, &passphrase("legacy", "old-pass", 10_000, "active"));
    with_ring(
        &ring,
        &[
            "encrypt",
            s(&plain),
            "--format",
            "openssl",
            "--key",
            "legacy",
            "-o",
            s(&legacy),
        ],
    )
    .ok();

    let out = dir.path().join("out");
    let new = dir.path().join("new.enc");
    write_ring(&ring, &passphrase("legacy", "old-pass", 10_000, "retired"));
    with_ring(
        &ring,
        &["decrypt", s(&legacy), "-o", s(&out), "--key", "legacy"],
    )
    .failed("key_retired");
    with_ring(
        &ring,
        &[
            "encrypt",
            s(&plain),
            "--format",
            "openssl",
            "--key",
            "legacy",
            "-o",
            s(&new),
        ],
    )
    .failed("key_retired");
    assert!(!out.exists() && !new.exists());

    write_ring(
        &ring,
        &passphrase("legacy", "old-pass", 10_000, "decrypt-only"),
    );
    with_ring(
        &ring,
        &["decrypt", s(&legacy), "-o", s(&out), "--key", "legacy"],
    )
    .ok();
    assert_eq!(fs::read(&out).unwrap(), b"legacy archive");
    let run = with_ring(
        &ring,
        &[
            "encrypt",
            s(&plain),
            "--format",
            "openssl",
            "--key",
            "legacy",
            "-o",
            s(&new),
        ],
    );
    assert!(
        run.code == 1 && run.stderr.contains("[key_retired]"),
        "a decrypt-only passphrase entry encrypted a new file: {run:#?}"
    );
    assert!(
        !new.exists(),
        "a decrypt-only passphrase entry wrote {}",
        new.display()
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Rewrap
// ---------------------------------------------------------------------------------------------

/// Intact: rewrap re-encrypts under the ring's current default key (the header names it),
/// the result decrypts to the original, the source is untouched with -o and replaced
/// atomically with --in-place (no temp debris), a failing in-place rewrap leaves the source
/// as it was, and an openssl-format source becomes a ringcrypt file.
#[test]
fn rewrap_moves_files_to_the_default_key() {
    let dir = tempdir();
    let ring = dir.path().join("keys.toml");
    let (a, b) = (secret(10), secret(11));
    let legacy_pass = "migrate-me-42";
    let keys = format!(
        "{}{}{}",
        key("a", &a, "active"),
        key("b", &b, "active"),
        passphrase("legacy", legacy_pass, 10_000, "active")
    );
    write_ring(&ring, &format!("default = \"a\"\n{keys}"));
    let plain = dir.path().join("plain");
    let data = random_bytes(200_000, 11);
    write_input(&plain, &data);
    let sealed = dir.path().join("sealed.rcrypt");
    with_ring(&ring, &["encrypt", s(&plain), "-o", s(&sealed)]).ok();
    assert_eq!(&fs::read(&sealed).unwrap()[16..32], &key_id(&a));

    // Rotate: b becomes the default.
    write_ring(&ring, &format!("default = \"b\"\n{keys}"));
    let loaded = KeyRing::load(&ring).unwrap();
    let b_id = key_id(&b);
    assert_eq!(loaded.by_name("b").unwrap().id_hex(), Some(hex(&b_id)));

    let sealed_before = snapshot(&sealed);
    let rewrapped = dir.path().join("rewrapped.rcrypt");
    let run = with_ring(&ring, &["rewrap", s(&sealed), "-o", s(&rewrapped)]).ok();
    assert!(run.stdout.contains("\"b\""), "{run:#?}");
    assert_eq!(
        snapshot(&sealed),
        sealed_before,
        "rewrap -o modified its input"
    );
    let bytes = fs::read(&rewrapped).unwrap();
    assert_eq!(&bytes[16..32], &b_id, "rewrapped file must name key b");
    assert_eq!(bytes.len() as u64, sealed_size(data.len() as u64, 16));
    let back = dir.path().join("back");
    with_ring(&ring, &["decrypt", s(&rewrapped), "-o", s(&back)]).ok();
    assert!(fs::read(&back).unwrap() == data);
    fs::remove_file(&back).unwrap();

    // Onto an existing output: refused without --force.
    let before = snapshot(&rewrapped);
    with_ring(&ring, &["rewrap", s(&sealed), "-o", s(&rewrapped)]).failed("exists");
    assert_eq!(snapshot(&rewrapped), before);
    with_ring(
        &ring,
        &[
            "rewrap",
            s(&sealed),
            "-o",
            s(&rewrapped),
            "--force",
            "--chunk-log2",
            "12",
        ],
    )
    .ok();
    let bytes = fs::read(&rewrapped).unwrap();
    assert_eq!(
        (bytes[10], bytes.len() as u64),
        (12, sealed_size(data.len() as u64, 12))
    );

    // A damaged source, in place: refused, source unchanged, nothing left behind.
    let damaged = dir.path().join("damaged.rcrypt");
    let mut broken = fs::read(&sealed).unwrap();
    let last = broken.len() - 1;
    broken[last] ^= 0x80;
    write_input(&damaged, &broken);
    let damaged_before = snapshot(&damaged);
    let listing_before = listing(dir.path());
    with_ring(&ring, &["rewrap", s(&damaged), "--in-place"]).failed("auth_failed");
    assert_eq!(snapshot(&damaged), damaged_before);
    assert_eq!(listing(dir.path()), listing_before);
    fs::remove_file(&damaged).unwrap();

    // In place: the source is replaced by a file under b.
    with_ring(&ring, &["rewrap", s(&sealed), "--in-place"]).ok();
    let bytes = fs::read(&sealed).unwrap();
    assert_eq!(&bytes[16..32], &b_id);
    with_ring(&ring, &["decrypt", s(&sealed), "-o", s(&back)]).ok();
    assert!(fs::read(&back).unwrap() == data);
    fs::remove_file(&back).unwrap();

    // An openssl-format file (made by the real openssl) becomes a ringcrypt file under b.
    let legacy = dir.path().join("legacy.enc");
    let pass = format!("pass:{legacy_pass}");
    run_openssl(&[
        "enc",
        "-aes-256-cbc",
        "-pbkdf2",
        "-iter",
        "10000",
        "-pass",
        &pass,
        "-in",
        s(&plain),
        "-out",
        s(&legacy),
    ]);
    let migrated = dir.path().join("migrated.rcrypt");
    with_ring(
        &ring,
        &["rewrap", s(&legacy), "-o", s(&migrated), "--key", "legacy"],
    )
    .ok();
    let bytes = fs::read(&migrated).unwrap();
    assert_eq!(&bytes[..8], MAGIC);
    assert_eq!(&bytes[16..32], &b_id);
    with_ring(&ring, &["decrypt", s(&migrated), "-o", s(&back)]).ok();
    assert!(fs::read(&back).unwrap() == data);

    assert_eq!(
        listing(dir.path()),
        names(&[
            "back",
            "keys.toml",
            "legacy.enc",
            "migrated.rcrypt",
            "plain",
            "rewrapped.rcrypt",
            "sealed.rcrypt"
        ])
    );
}

// ---------------------------------------------------------------------------------------------
// 9. openssl interop
// ---------------------------------------------------------------------------------------------

/// Intact: the `openssl` format is exactly what `openssl enc -aes-256-cbc -pbkdf2 -iter N`
/// reads and writes, both ways, at sizes around the block size; encrypting in it always warns
/// that it is NOT authenticated.
#[test]
fn openssl_format_interoperates_with_the_real_openssl() {
    let dir = tempdir();
    let ring = dir.path().join("keys.toml");
    let pass = "correct horse battery";
    write_ring(
        &ring,
        &format!(
            "{}{}",
            key("k", &secret(5), "active"),
            passphrase("legacy", pass, 10_000, "active")
        ),
    );
    let pass_arg = format!("pass:{pass}");
    for len in [0usize, 1, 16, 100_000] {
        let plain = dir.path().join(format!("p{len}"));
        let data = random_bytes(len, 900 + len as u64);
        write_input(&plain, &data);

        // (a) openssl encrypts, ringcrypt decrypts.
        let by_openssl = dir.path().join(format!("e{len}"));
        run_openssl(&[
            "enc",
            "-aes-256-cbc",
            "-pbkdf2",
            "-iter",
            "10000",
            "-pass",
            &pass_arg,
            "-in",
            s(&plain),
            "-out",
            s(&by_openssl),
        ]);
        let x = dir.path().join(format!("x{len}"));
        with_ring(
            &ring,
            &["decrypt", s(&by_openssl), "-o", s(&x), "--key", "legacy"],
        )
        .ok();
        assert!(
            fs::read(&x).unwrap() == data,
            "openssl -> ringcrypt, {len} bytes"
        );

        // (b) ringcrypt encrypts (with a warning), openssl decrypts.
        let by_ringcrypt = dir.path().join(format!("e2-{len}"));
        let run = with_ring(
            &ring,
            &[
                "encrypt",
                s(&plain),
                "--format",
                "openssl",
                "--key",
                "legacy",
                "-o",
                s(&by_ringcrypt),
            ],
        )
        .ok();
        assert!(run.stderr.contains("NOT authenticated"), "{run:#?}");
        let bytes = fs::read(&by_ringcrypt).unwrap();
        assert_eq!(&bytes[..8], b"Salted__");
        assert_eq!(bytes.len() as u64, openssl_size(len as u64));
        let y = dir.path().join(format!("y{len}"));
        run_openssl(&[
            "enc",
            "-d",
            "-aes-256-cbc",
            "-pbkdf2",
            "-iter",
            "10000",
            "-pass",
            &pass_arg,
            "-in",
            s(&by_ringcrypt),
            "-out",
            s(&y),
        ]);
        assert!(
            fs::read(&y).unwrap() == data,
            "ringcrypt -> openssl, {len} bytes"
        );
        assert_eq!(snapshot(&plain).bytes, data);
    }
    // With a single passphrase entry in the ring, --key may be left out.
    let only = dir.path().join("only.toml");
    write_ring(&only, &passphrase("legacy", pass, 10_000, "active"));
    let z = dir.path().join("z");
    with_ring(&only, &["decrypt", s(&dir.path().join("e16")), "-o", s(&z)]).ok();
    assert!(fs::read(&z).unwrap() == random_bytes(16, 916));
}

/// Intact: a wrong passphrase gives exit 1 and no output file.
///
/// The openssl format has no MAC, so the only check is the PKCS#7 padding of the last block.
/// Under a wrong key that block decrypts to random bytes, whose padding still looks valid
/// with probability about 1/256 (a final 0x01 byte, or 0x02 0x02, ...): then the wrong
/// passphrase "succeeds" and yields garbage. So each try must either fail cleanly or give
/// bytes that differ from the plaintext, and most (at least one) must fail cleanly.
#[test]
fn a_wrong_openssl_passphrase_fails_cleanly() {
    let dir = tempdir();
    let ring = dir.path().join("keys.toml");
    write_ring(
        &ring,
        &passphrase("legacy", "the-wrong-one", 10_000, "active"),
    );
    let mut clean = 0;
    for attempt in 0..6u64 {
        let plain = dir.path().join("plain");
        let data = random_bytes(1000 + attempt as usize * 7, 300 + attempt);
        fs::write(&plain, &data).unwrap();
        let enc = dir.path().join("data.enc");
        run_openssl(&[
            "enc",
            "-aes-256-cbc",
            "-pbkdf2",
            "-iter",
            "10000",
            "-pass",
            "pass:the-right-one",
            "-in",
            s(&plain),
            "-out",
            s(&enc),
        ]);
        let out = dir.path().join("out");
        let run = with_ring(
            &ring,
            &["decrypt", s(&enc), "-o", s(&out), "--key", "legacy"],
        );
        match run.code {
            1 => {
                assert!(run.stderr.contains("[auth_failed]"), "{run:#?}");
                assert!(!out.exists(), "output left behind after a failed decrypt");
                assert_eq!(
                    listing(dir.path()),
                    names(&["data.enc", "keys.toml", "plain"])
                );
                clean += 1;
            }
            0 => {
                assert!(
                    fs::read(&out).unwrap() != data,
                    "a wrong passphrase gave the plaintext"
                );
                fs::remove_file(&out).unwrap();
            }
            _ => panic!("unexpected exit: {run:#?}"),
        }
    }
    assert!(clean >= 1, "no wrong-passphrase attempt failed cleanly");
}

// ---------------------------------------------------------------------------------------------
// 10. Usage errors
// ---------------------------------------------------------------------------------------------

/// Intact: a wrong command line is exit 2 (never 0 or 1) and writes nothing; a missing key
/// ring is exit 2 with a hint saying how to make one.
#[test]
fn bad_usage_exits_2() {
    let (dir, ring, _) = one_key_setup();
    let plain = dir.path().join("plain");
    write_input(&plain, b"data");
    let before = listing(dir.path());

    ringcrypt(&["frobnicate"]).usage();
    ringcrypt(&[]).usage();
    with_ring(&ring, &["encrypt"]).usage();
    with_ring(&ring, &["decrypt"]).usage();
    with_ring(&ring, &["rewrap"]).usage();
    for bad in ["30", "11", "25", "x", "-1"] {
        with_ring(&ring, &["encrypt", s(&plain), "--chunk-log2", bad]).usage();
    }
    with_ring(&ring, &["encrypt", s(&plain), "--format", "zip"]).usage();
    with_ring(&ring, &["encrypt", s(&plain), "--bogus"]).usage();
    // rewrap needs exactly one of -o and --in-place.
    with_ring(&ring, &["rewrap", s(&plain)]).usage();
    with_ring(
        &ring,
        &[
            "rewrap",
            s(&plain),
            "--in-place",
            "-o",
            s(&dir.path().join("o")),
        ],
    )
    .usage();
    assert_eq!(listing(dir.path()), before);

    // Without --keys the client asks the daemon; with none listening that is exit 3, and
    // the message names the socket and says how to start one or go offline.
    let socket = dir.path().join("no-daemon.sock");
    for args in [
        vec!["--socket", s(&socket), "encrypt", s(&plain)],
        vec!["--socket", s(&socket), "decrypt", "x.rcrypt"],
        vec!["--socket", s(&socket), "rewrap", "x.rcrypt", "--in-place"],
    ] {
        let run = ringcrypt(&args);
        assert_eq!(run.code, 3, "no daemon: {run:#?}");
        assert!(
            run.stderr.contains(s(&socket)) && run.stderr.contains("hint: "),
            "an unreachable daemon needs the socket named and a hint: {run:#?}"
        );
    }
    assert_eq!(listing(dir.path()), before);

    // RINGCRYPT_KEYS stands in for --keys.
    let by_env = Command::new(BIN)
        .args(["encrypt", s(&plain)])
        .env("RINGCRYPT_KEYS", &ring)
        .output()
        .unwrap();
    assert!(by_env.status.success(), "{by_env:?}");
    assert!(dir.path().join("plain.rcrypt").is_file());

    // --help and --version are not errors.
    assert!(ringcrypt(&["--help"]).ok().stdout.contains("Exit codes"));
    ringcrypt(&["--version"]).ok();
}
