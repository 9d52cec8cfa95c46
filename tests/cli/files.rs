//! Round trips, tampering, existing outputs and the input as output, missing and unusable
//! inputs and output directories.

use std::os::unix::fs::{FileExt, PermissionsExt};

use ringcrypt::Code;
use ringcrypt::keys::KeyRing;
use ringcrypt::offline::{self, Format, Job};
use ringcrypt::output::Durability;

use super::*;

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

        let enc = with_ring(&ring, &["encrypt", p(&plain)]).ok();
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
        with_ring(&ring, &["decrypt", p(&sealed), "-o", p(&back)]).ok();
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
    with_ring(&ring, &["encrypt", p(&plain), "-o", p(&again)]).ok();
    assert_ne!(
        fs::read(&again).unwrap(),
        fs::read(dir.path().join("plain-1.rcrypt")).unwrap(),
        "two encryptions of one file must differ (random salt)"
    );
    // Default decrypt name: strip .rcrypt.
    let sub = dir.path().join("sub");
    fs::create_dir(&sub).unwrap();
    fs::copy(&again, sub.join("data.bin.rcrypt")).unwrap();
    with_ring(&ring, &["decrypt", p(&sub.join("data.bin.rcrypt"))]).ok();
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
        &["encrypt", p(&plain), "-o", p(&sealed), "--chunk-log2", "12"],
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
            with_ring(&ring, &["decrypt", p(&input)])
        } else {
            with_ring(
                &ring,
                &["decrypt", p(&input), "-o", p(&out_dir.join("plain"))],
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
        with_ring(&ring, &["decrypt", p(&input)]).failed("auth_failed");
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
        with_ring(&ring, &["decrypt", p(&input)]).failed("bad_format");
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

    with_ring(&ring, &["encrypt", p(&plain), "-o", p(&out)]).failed("exists");
    assert_eq!(snapshot(&out), before);
    // The default name too.
    let default_out = dir.path().join("plain.rcrypt");
    write_input(&default_out, b"also precious");
    let default_before = snapshot(&default_out);
    with_ring(&ring, &["encrypt", p(&plain)]).failed("exists");
    assert_eq!(snapshot(&default_out), default_before);

    with_ring(&ring, &["encrypt", p(&plain), "-o", p(&out), "--force"]).ok();
    assert_eq!(fs::read(&out).unwrap().len() as u64, sealed_size(10, 16));

    // decrypt onto an existing file: same rules.
    let target = dir.path().join("target");
    write_input(&target, b"keep me");
    let target_before = snapshot(&target);
    with_ring(&ring, &["decrypt", p(&out), "-o", p(&target)]).failed("exists");
    assert_eq!(snapshot(&target), target_before);
    with_ring(&ring, &["decrypt", p(&out), "-o", p(&target), "-f"]).ok();
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
    with_ring(&ring, &["encrypt", p(&plain), "-o", p(&sealed)]).ok();
    let before = listing(dir.path());
    let run = with_ring(&ring, &["decrypt", p(&sealed)]).usage();
    assert!(run.stderr.contains("-o"), "{run:#?}");
    // A file called just `.rcrypt` has no name to strip to.
    let bare = dir.path().join(".rcrypt");
    fs::copy(&sealed, &bare).unwrap();
    with_ring(&ring, &["decrypt", p(&bare)]).usage();
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
    with_ring(&ring, &["encrypt", p(&plain), "-o", p(&sealed)]).ok();
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
            let mut args = vec!["encrypt", p(&plain), "-o", p(out)];
            args.extend_from_slice(extra);
            refused(with_ring(&ring, &args));
        }
        for out in [&sealed, &sealed_link] {
            let mut args = vec!["decrypt", p(&sealed), "-o", p(out)];
            args.extend_from_slice(extra);
            refused(with_ring(&ring, &args));
            let mut args = vec!["rewrap", p(&sealed), "-o", p(out)];
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
    let run = with_ring(&ring, &["encrypt", p(&missing)]).failed("not_found");
    assert!(run.stderr.contains(p(&missing)), "{run:#?}");
    with_ring(&ring, &["decrypt", p(&dir.path().join("nope.rcrypt"))]).failed("not_found");
    with_ring(
        &ring,
        &[
            "rewrap",
            p(&dir.path().join("nope.rcrypt")),
            "-o",
            p(&dir.path().join("x")),
        ],
    )
    .failed("not_found");

    let subdir = dir.path().join("adir");
    fs::create_dir(&subdir).unwrap();
    // A directory without -r is a usage error whose hint is -r.
    let run = with_ring(&ring, &["encrypt", p(&subdir)]).usage();
    assert!(run.stderr.contains("is a directory"), "{run:#?}");
    assert!(run.stderr.contains("hint: pass -r"), "{run:#?}");
    let sdir = dir.path().join("sdir.rcrypt");
    fs::create_dir(&sdir).unwrap();
    with_ring(&ring, &["decrypt", p(&sdir)]).usage();

    let plain = dir.path().join("plain");
    write_input(&plain, b"data");
    let gone = dir.path().join("gone");
    let run = with_ring(
        &ring,
        &[
            "encrypt",
            p(&plain),
            "-o",
            p(&gone.join("deeper/out.rcrypt")),
        ],
    )
    .failed("not_found");
    assert!(run.stderr.contains("gone"), "{run:#?}");
    with_ring(
        &ring,
        &["encrypt", p(&plain), "-o", p(&gone.join("out.rcrypt"))],
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
    if running_as_root() {
        println!("skipped: running as root, which can read a mode-000 file");
        return;
    }
    let (dir, ring, _) = one_key_setup();
    let plain = dir.path().join("plain");
    write_input(&plain, b"secret stuff");
    fs::set_permissions(&plain, fs::Permissions::from_mode(0o000)).unwrap();
    let run = with_ring(&ring, &["encrypt", p(&plain)]).failed("permission_denied");
    assert!(run.stderr.contains(p(&plain)), "{run:#?}");
    fs::set_permissions(&plain, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(listing(dir.path()), names(&["keys.toml", "plain"]));
}
