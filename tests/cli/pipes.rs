//! Streams offline (`--keys`): `-` and `/dev/stdin` / `/dev/stdout` as input and output, a
//! `tar` round trip, a consumer that stops reading (`head -c`), and failures mid-stream: the
//! consumer gets only chunks whose tags verified, the run exits 1 and says how much went out,
//! and a named output never appears partially.

use std::process::Output;

use super::*;

/// Runs `ringcrypt --keys RING ARGS` in `cwd` with `stdin` fed to it; its raw output.
fn piped(ring: &Path, cwd: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut cmd = support::ringcrypt_command();
    cmd.arg("--keys").arg(ring).args(args).current_dir(cwd);
    support::output_fed(&mut cmd, stdin)
}

/// `sh -c SCRIPT` in `cwd` with `RC` naming the binary and `KEYS` the ring.
fn shell(cwd: &Path, ring: &Path, script: &str) -> Output {
    Command::new("bash")
        .args(["-c", script])
        .current_dir(cwd)
        .env("RC", CLI)
        .env("KEYS", ring)
        .env_remove("RINGCRYPT_KEYS")
        .env_remove("RINGCRYPT_SOCKET")
        .output()
        .expect("bash runs")
}

/// Intact: stdin to stdout both ways gives back every byte at the chunk boundaries; what
/// `encrypt -` writes is an ordinary sealed file (its size is the format's, and the file
/// decrypt opens it); `/dev/stdin` and `/dev/stdout` work as `-` does; the directory holds
/// nothing but what the test wrote (no temp file, no `-.rcrypt`).
#[test]
fn stdin_to_stdout_round_trips() {
    let (dir, ring, _) = one_key_setup();
    let c = 4096usize;
    for (i, len) in [0, 1, c - 1, c, 8 * c, 8 * c + 1, 3 << 20]
        .into_iter()
        .enumerate()
    {
        let data = random_bytes(len, 900 + i as u64);
        let enc = piped(
            &ring,
            dir.path(),
            &["encrypt", "-", "--chunk-log2", "12"],
            &data,
        );
        assert!(enc.status.success(), "encrypt - ({len}): {enc:?}");
        assert!(enc.stderr.is_empty(), "nothing but data: {enc:?}");
        assert_eq!(
            enc.stdout.len() as u64,
            sealed_size(len as u64, 12),
            "{len}"
        );

        let dec = piped(
            &ring,
            dir.path(),
            &["decrypt", "/dev/stdin", "-o", "/dev/stdout"],
            &enc.stdout,
        );
        assert!(dec.status.success(), "decrypt ({len}): {dec:?}");
        assert_eq!(dec.stdout, data, "round trip of {len} bytes");

        // The file path opens what the stream path sealed.
        let sealed = dir.path().join("s.rcrypt");
        fs::write(&sealed, &enc.stdout).unwrap();
        let back = dir.path().join("s");
        with_ring(&ring, &["decrypt", p(&sealed)]).ok();
        assert_eq!(fs::read(&back).unwrap(), data, "{len}");
        fs::remove_file(&sealed).unwrap();
        fs::remove_file(&back).unwrap();
    }
    assert_eq!(listing(dir.path()), names(&["keys.toml"]));
}

/// Intact: `tar c | encrypt - -o X` makes X only when complete (mode 0600: no input mode to
/// keep), and `decrypt X -o - | tar x` restores every file byte for byte.
#[test]
fn a_tar_round_trip_through_pipes() {
    let (dir, ring, _) = one_key_setup();
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    let files = [
        ("a.bin", 70_000usize),
        ("sub/b.bin", 1),
        ("sub/c.bin", 1 << 20),
    ];
    for (i, (name, len)) in files.iter().enumerate() {
        fs::write(src.join(name), random_bytes(*len, 40 + i as u64)).unwrap();
    }
    let out = shell(
        dir.path(),
        &ring,
        "set -eo pipefail; tar c src | \"$RC\" --keys \"$KEYS\" encrypt - -o backup.tar.rcrypt",
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(mode_of(&dir.path().join("backup.tar.rcrypt")), 0o600);
    fs::create_dir(dir.path().join("restore")).unwrap();
    let out = shell(
        dir.path(),
        &ring,
        "set -eo pipefail; \"$RC\" --keys \"$KEYS\" decrypt backup.tar.rcrypt -o - | tar x -C restore",
    );
    assert!(out.status.success(), "{out:?}");
    for (name, _) in files {
        assert_eq!(
            fs::read(dir.path().join("restore/src").join(name)).unwrap(),
            fs::read(src.join(name)).unwrap(),
            "{name}"
        );
    }
}

/// Intact: a consumer that stops early (`head -c`) ends the run with exit 0 and nothing on
/// stderr, having received exactly the bytes it asked for; the directory is unchanged.
#[test]
fn a_consumer_that_stops_early_is_a_clean_exit() {
    let (dir, ring, _) = one_key_setup();
    let data = random_bytes(8 << 20, 77);
    fs::write(dir.path().join("big"), &data).unwrap();
    with_ring(&ring, &["encrypt", p(&dir.path().join("big"))]).ok();
    let before = listing(dir.path());
    for (what, script) in [
        (
            "decrypt",
            "\"$RC\" --keys \"$KEYS\" decrypt big.rcrypt -o - 2>err | head -c 1000 > head.out; echo ${PIPESTATUS[0]} > status",
        ),
        (
            "encrypt",
            "\"$RC\" --keys \"$KEYS\" encrypt - < big 2>err | head -c 1000 > head.out; echo ${PIPESTATUS[0]} > status",
        ),
    ] {
        let out = shell(dir.path(), &ring, script);
        assert!(out.status.success(), "{what}: {out:?}");
        let status = fs::read_to_string(dir.path().join("status")).unwrap();
        assert_eq!(status.trim(), "0", "{what}: exit status of ringcrypt");
        assert_eq!(
            fs::read_to_string(dir.path().join("err")).unwrap(),
            "",
            "{what}: stderr"
        );
        let head = fs::read(dir.path().join("head.out")).unwrap();
        assert_eq!(head.len(), 1000, "{what}");
        if what == "decrypt" {
            assert_eq!(head, &data[..1000]);
        } else {
            assert_eq!(&head[..8], MAGIC);
        }
        for name in ["status", "err", "head.out"] {
            fs::remove_file(dir.path().join(name)).unwrap();
        }
        assert_eq!(listing(dir.path()), before, "{what}: nothing left behind");
    }
}

/// Intact: a stream whose record 10 was changed (chunks of 4 KiB, opened eight at a time)
/// gives the consumer exactly the first eight verified chunks and nothing of the batch
/// holding the bad one; the run exits 1 with `[auth_failed]` and says how much went out. A
/// truncated stream likewise. With a named output, nothing appears under its name.
#[test]
fn a_failure_mid_stream_exits_1_after_verified_chunks_only() {
    let (dir, ring, _) = one_key_setup();
    let c = 4096usize;
    let data = random_bytes(20 * c + 5, 3);
    let enc = piped(
        &ring,
        dir.path(),
        &["encrypt", "-", "--chunk-log2", "12"],
        &data,
    );
    assert!(enc.status.success(), "{enc:?}");
    let mut tampered = enc.stdout.clone();
    let record = c + 32;
    tampered[96 + 10 * record + 100] ^= 0x01;
    let mut truncated = enc.stdout.clone();
    truncated.truncate(96 + 12 * record);

    for (what, sealed) in [("tampered", &tampered), ("truncated", &truncated)] {
        let out = piped(&ring, dir.path(), &["decrypt", "-", "-o", "-"], sealed);
        let run = Run::of(out.clone());
        let run = run.failed("auth_failed");
        assert_eq!(
            out.stdout,
            &data[..8 * c],
            "{what}: only the first batch, verified"
        );
        assert!(
            run.stderr.contains(&format!("received {} bytes", 8 * c)),
            "{what}: says how much went out: {run:#?}"
        );

        let named = piped(
            &ring,
            dir.path(),
            &["decrypt", "-", "-o", "out.bin"],
            sealed,
        );
        Run::of(named).failed("auth_failed");
        assert_eq!(
            listing(dir.path()),
            names(&["keys.toml"]),
            "{what}: no partial file"
        );
    }
}

/// Intact: `-o` naming an existing file is refused without --force from a pipe as from a
/// file (the file keeps its bytes), and `cat f | ringcrypt encrypt -` with no output
/// writes the sealed stream to stdout and creates no file at all.
#[test]
fn named_outputs_from_pipes_keep_the_rules() {
    let (dir, ring, _) = one_key_setup();
    let existing = dir.path().join("kept.rcrypt");
    fs::write(&existing, b"precious").unwrap();
    let out = piped(
        &ring,
        dir.path(),
        &["encrypt", "-", "-o", "kept.rcrypt"],
        b"new data",
    );
    Run::of(out).failed("exists");
    assert_eq!(fs::read(&existing).unwrap(), b"precious");

    let out = piped(
        &ring,
        dir.path(),
        &["encrypt", "-", "-o", "kept.rcrypt", "--force"],
        b"new data",
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(fs::metadata(&existing).unwrap().len(), sealed_size(8, 16));

    let out = piped(&ring, dir.path(), &["encrypt", "-"], b"to stdout");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout.len() as u64, sealed_size(9, 16));
    assert_eq!(listing(dir.path()), names(&["keys.toml", "kept.rcrypt"]));
}

/// Intact: a FIFO named as the input is read as a stream into an atomic output, a device
/// named as the output (`/dev/null`) is written as a stream, and the openssl format goes
/// through pipes both ways; the directory holds only what the test made.
#[test]
fn fifos_devices_and_the_openssl_format_stream_too() {
    let (dir, ring, k) = one_key_setup();
    write_private(
        &ring,
        &(key("k", &k, "active") + &passphrase("legacy", "pw", 1000, "active")),
    );
    let data = random_bytes(200_000, 8);
    let fifo = dir.path().join("fifo");
    support::mkfifo(&fifo);
    let writer = {
        let (fifo, data) = (fifo.clone(), data.clone());
        std::thread::spawn(move || fs::write(fifo, data).unwrap())
    };
    let out = dir.path().join("from-fifo.rcrypt");
    with_ring(&ring, &["--json", "encrypt", p(&fifo), "-o", p(&out)]).usage();
    let run = with_ring(&ring, &["encrypt", p(&fifo), "-o", p(&out)]).ok();
    writer.join().unwrap();
    assert!(run.stdout.contains("encrypted"), "{run:#?}");
    with_ring(&ring, &["decrypt", p(&out), "-o", "/dev/null"]).ok();
    let back = piped(
        &ring,
        dir.path(),
        &["decrypt", "-"],
        &fs::read(&out).unwrap(),
    );
    assert_eq!(back.stdout, data);

    let sealed = piped(
        &ring,
        dir.path(),
        &["encrypt", "-", "--format", "openssl", "--key", "legacy"],
        &data,
    );
    assert!(sealed.status.success(), "{sealed:?}");
    assert_eq!(&sealed.stdout[..8], b"Salted__");
    assert_eq!(sealed.stdout.len() as u64, openssl_size(data.len() as u64));
    let opened = piped(
        &ring,
        dir.path(),
        &["decrypt", "-", "--key", "legacy"],
        &sealed.stdout,
    );
    assert!(opened.status.success(), "{opened:?}");
    assert_eq!(opened.stdout, data);
    assert_eq!(
        listing(dir.path()),
        names(&["keys.toml", "fifo", "from-fifo.rcrypt"])
    );
}
