//! Key generation, key ring checks, key states, and rewrap to the default key.

use std::os::unix::fs::PermissionsExt;

use ringcrypt::keys::KeyRing;

use super::*;

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
    write_private(&ring, &first.stdout);
    assert!(!first.stdout.contains("default"), "{}", first.stdout);
    let parsed = KeyRing::load(&ring).expect("keygen output loads as a key ring");
    let entry = parsed.by_name("prod-2026").expect("the named key");
    assert_eq!(entry.id_hex(), Some(hex(&key_id(&a))));
    let plain = dir.path().join("p");
    write_input(&plain, b"keygen round trip");
    let enc = with_ring(&ring, &["encrypt", p(&plain)]).ok();
    assert!(enc.stdout.contains("prod-2026"), "{enc:#?}");
    assert!(!enc.stdout.contains(&a) && !enc.stderr.contains(&a));
    let sealed = fs::read(dir.path().join("p.rcrypt")).unwrap();
    assert_eq!(&sealed[16..32], &key_id(&a), "sealed under the keygen key");
    let back = dir.path().join("back");
    with_ring(
        &ring,
        &["decrypt", p(&dir.path().join("p.rcrypt")), "-o", p(&back)],
    )
    .ok();
    assert_eq!(fs::read(&back).unwrap(), b"keygen round trip");

    // `keygen >> keys.toml` twice: with two active keys and no default, encrypt needs --key
    // (exit 1, nothing written) until a default is named.
    let two = dir.path().join("two.toml");
    write_private(&two, &format!("{}\n{}", first.stdout, unnamed.stdout));
    let out = dir.path().join("q.rcrypt");
    let refused = with_ring(&two, &["encrypt", p(&plain), "-o", p(&out)]).failed("bad_request");
    assert!(refused.stderr.contains("default"), "{refused:#?}");
    assert!(!out.exists());
    with_ring(&two, &["encrypt", p(&plain), "-o", p(&out), "--key", name]).ok();
    assert_eq!(
        &fs::read(&out).unwrap()[16..32],
        &key_id(&secret_of(&unnamed.stdout))
    );
    write_private(
        &two,
        &format!(
            "default = \"prod-2026\"\n{}\n{}",
            first.stdout, unnamed.stdout
        ),
    );
    let out2 = dir.path().join("r.rcrypt");
    with_ring(&two, &["encrypt", p(&plain), "-o", p(&out2)]).ok();
    assert_eq!(&fs::read(&out2).unwrap()[16..32], &key_id(&a));
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
    with_ring(&ring, &["encrypt", p(&plain), "-o", p(&out)]).ok();
    fs::remove_file(&out).unwrap();

    for mode in [0o640, 0o644, 0o604, 0o666, 0o660, 0o620, 0o602] {
        fs::set_permissions(&ring, fs::Permissions::from_mode(mode)).unwrap();
        let run = with_ring(&ring, &["encrypt", p(&plain), "-o", p(&out)]);
        assert_eq!(run.code, 1, "mode {mode:o} accepted: {run:#?}");
        assert!(
            run.stderr.contains(p(&ring)) && run.stderr.contains("chmod 600"),
            "mode {mode:o}: message must name the file and `chmod 600`: {run:#?}"
        );
        assert!(!run.stderr.contains(&k[..16]));
        assert!(!out.exists());
    }
    fs::set_permissions(&ring, fs::Permissions::from_mode(0o600)).unwrap();

    let link = dir.path().join("link.toml");
    std::os::unix::fs::symlink(&ring, &link).unwrap();
    let run = with_ring(&link, &["encrypt", p(&plain), "-o", p(&out)]);
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(
        run.stderr.contains("symbolic link") && run.stderr.contains(p(&link)),
        "{run:#?}"
    );
    assert!(!out.exists());

    let missing = dir.path().join("missing.toml");
    let run = with_ring(&missing, &["encrypt", p(&plain), "-o", p(&out)]).failed("not_found");
    assert!(run.stderr.contains(p(&missing)), "{run:#?}");

    // A ring owned by someone else is refused too (only root can make one to test with).
    if running_as_root() {
        let foreign = dir.path().join("foreign.toml");
        write_private(&foreign, &key("k", &k, "active"));
        std::os::unix::fs::chown(&foreign, Some(65_534), Some(65_534)).unwrap();
        let run = with_ring(&foreign, &["encrypt", p(&plain), "-o", p(&out)]);
        assert_eq!(run.code, 1, "{run:#?}");
        assert!(
            run.stderr.contains("owned by") && run.stderr.contains(p(&foreign)),
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
        write_private(&ring, text);
        let run = with_ring(&ring, &["encrypt", p(&plain), "-o", p(&out)]);
        assert_eq!(run.code, 1, "{what}: {run:#?}");
        assert!(
            run.stderr.contains(p(&ring)) && run.stderr.contains(needle),
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
    write_private(
        &ring,
        "[[key]]\nname = \"legacy\"\npassphrase = 73915562048\n",
    );
    let run = with_ring(&ring, &["encrypt", p(&plain), "--format", "openssl"]);
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(run.stderr.contains(p(&ring)), "{run:#?}");
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
        &["encrypt", p(&plain), "-o", p(&sealed), "--key", "k"],
    )
    .ok();
    let out = dir.path().join("out");
    let new = dir.path().join("new.rcrypt");
    let start = listing(dir.path());

    for state in ["decrypt-only", "retired"] {
        write_private(
            &ring,
            &format!(
                "default = \"fresh\"\n{}{}",
                key("k", &k, state),
                key("fresh", &other, "active")
            ),
        );
        let run = with_ring(&ring, &["encrypt", p(&plain), "-o", p(&new), "--key", "k"])
            .failed("key_retired");
        assert!(run.stderr.contains(state), "{state}: {run:#?}");
        assert_eq!(listing(dir.path()), start, "{state}");
        // The default key still encrypts.
        with_ring(&ring, &["encrypt", p(&plain), "-o", p(&new)]).ok();
        assert_eq!(&fs::read(&new).unwrap()[16..32], &key_id(&other));
        fs::remove_file(&new).unwrap();
    }

    // decrypt-only: old files still open.
    write_private(&ring, &key("k", &k, "decrypt-only"));
    with_ring(&ring, &["decrypt", p(&sealed), "-o", p(&out)]).ok();
    assert!(fs::read(&out).unwrap() == data);
    fs::remove_file(&out).unwrap();

    // retired: refused, nothing written.
    write_private(&ring, &key("k", &k, "retired"));
    let run = with_ring(&ring, &["decrypt", p(&sealed), "-o", p(&out)]).failed("key_retired");
    assert!(run.stderr.contains("\"k\""), "{run:#?}");
    assert_eq!(listing(dir.path()), start);
    // rewrap cannot rescue a file under a retired key either (the default key is active).
    write_private(
        &ring,
        &format!(
            "{}{}",
            key("k", &k, "retired"),
            key("fresh", &other, "active")
        ),
    );
    with_ring(&ring, &["rewrap", p(&sealed), "-o", p(&new)]).failed("key_retired");
    assert_eq!(listing(dir.path()), start);

    // removed: unknown key, nothing written.
    write_private(&ring, &key("fresh", &other, "active"));
    with_ring(&ring, &["decrypt", p(&sealed), "-o", p(&out)]).failed("unknown_key");
    with_ring(&ring, &["rewrap", p(&sealed), "-o", p(&new)]).failed("unknown_key");
    assert_eq!(listing(dir.path()), start);

    // An unknown key name is unknown_key too.
    with_ring(
        &ring,
        &["encrypt", p(&plain), "-o", p(&new), "--key", "nobody"],
    )
    .failed("unknown_key");
    assert_eq!(listing(dir.path()), start);

    // The default must be an active key: a ring whose default is decrypt-only is refused.
    write_private(
        &ring,
        &format!("default = \"k\"\n{}", key("k", &k, "decrypt-only")),
    );
    assert_eq!(
        with_ring(&ring, &["decrypt", p(&sealed), "-o", p(&out)]).code,
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
    write_private(&ring, &passphrase("legacy", "old-pass", 10_000, "active"));
    encrypt_legacy(&ring, &plain, &legacy).ok();

    let out = dir.path().join("out");
    let new = dir.path().join("new.enc");
    write_private(&ring, &passphrase("legacy", "old-pass", 10_000, "retired"));
    with_ring(
        &ring,
        &["decrypt", p(&legacy), "-o", p(&out), "--key", "legacy"],
    )
    .failed("key_retired");
    encrypt_legacy(&ring, &plain, &new).failed("key_retired");
    assert!(!out.exists() && !new.exists());

    write_private(
        &ring,
        &passphrase("legacy", "old-pass", 10_000, "decrypt-only"),
    );
    with_ring(
        &ring,
        &["decrypt", p(&legacy), "-o", p(&out), "--key", "legacy"],
    )
    .ok();
    assert_eq!(fs::read(&out).unwrap(), b"legacy archive");
    let run = encrypt_legacy(&ring, &plain, &new);
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
    write_private(&ring, &format!("default = \"a\"\n{keys}"));
    let plain = dir.path().join("plain");
    let data = random_bytes(200_000, 11);
    write_input(&plain, &data);
    let sealed = dir.path().join("sealed.rcrypt");
    with_ring(&ring, &["encrypt", p(&plain), "-o", p(&sealed)]).ok();
    assert_eq!(&fs::read(&sealed).unwrap()[16..32], &key_id(&a));

    // Rotate: b becomes the default.
    write_private(&ring, &format!("default = \"b\"\n{keys}"));
    let loaded = KeyRing::load(&ring).unwrap();
    let b_id = key_id(&b);
    assert_eq!(loaded.by_name("b").unwrap().id_hex(), Some(hex(&b_id)));

    let sealed_before = snapshot(&sealed);
    let rewrapped = dir.path().join("rewrapped.rcrypt");
    let run = with_ring(&ring, &["rewrap", p(&sealed), "-o", p(&rewrapped)]).ok();
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
    with_ring(&ring, &["decrypt", p(&rewrapped), "-o", p(&back)]).ok();
    assert!(fs::read(&back).unwrap() == data);
    fs::remove_file(&back).unwrap();

    // Onto an existing output: refused without --force.
    let before = snapshot(&rewrapped);
    with_ring(&ring, &["rewrap", p(&sealed), "-o", p(&rewrapped)]).failed("exists");
    assert_eq!(snapshot(&rewrapped), before);
    with_ring(
        &ring,
        &[
            "rewrap",
            p(&sealed),
            "-o",
            p(&rewrapped),
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
    with_ring(&ring, &["rewrap", p(&damaged), "--in-place"]).failed("auth_failed");
    assert_eq!(snapshot(&damaged), damaged_before);
    assert_eq!(listing(dir.path()), listing_before);
    fs::remove_file(&damaged).unwrap();

    // In place: the source is replaced by a file under b.
    with_ring(&ring, &["rewrap", p(&sealed), "--in-place"]).ok();
    let bytes = fs::read(&sealed).unwrap();
    assert_eq!(&bytes[16..32], &b_id);
    with_ring(&ring, &["decrypt", p(&sealed), "-o", p(&back)]).ok();
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
        p(&plain),
        "-out",
        p(&legacy),
    ]);
    let migrated = dir.path().join("migrated.rcrypt");
    with_ring(
        &ring,
        &["rewrap", p(&legacy), "-o", p(&migrated), "--key", "legacy"],
    )
    .ok();
    let bytes = fs::read(&migrated).unwrap();
    assert_eq!(&bytes[..8], MAGIC);
    assert_eq!(&bytes[16..32], &b_id);
    with_ring(&ring, &["decrypt", p(&migrated), "-o", p(&back)]).ok();
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
